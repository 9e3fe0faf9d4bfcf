package relay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/internal/badgerdir"
)

// Append implements Store. The fence check, the Base checks and all writes
// are one Badger transaction, so a crash leaves all or nothing, and the
// collection lock means no other write to the collection interleaves. Per
// entry it writes the log entry, the record's meta and one tail key: what
// the push adds, whatever the record's history.
func (s *BadgerStore) Append(ctx context.Context, c Coll, fence uint64, now time.Time, entries []Entry) (uint64, error) {
	if err := checkColl(c); err != nil {
		return 0, err
	}
	if err := checkEntries(entries); err != nil {
		return 0, err
	}
	var head uint64
	err := s.update(ctx, c, func(txn *badger.Txn) error {
		if fence != 0 {
			l, ok, err := getLease(txn, c)
			if err != nil {
				return err
			}
			if !ok || l.Fence != fence || !leaseLive(l, now) {
				return fmt.Errorf("append to %s/%s with fence %d: %w", c.Tenant, c.Collection, fence, ErrStaleFence)
			}
		}
		var err error
		if head, err = getUint64(txn, collKey("head", c)); err != nil {
			return err
		}
		u, err := getUsage(txn, c)
		if err != nil {
			return err
		}
		for _, e := range entries {
			// A transaction reads its own writes, so a second entry for
			// one record is checked against the first one's heads.
			m, found, err := getRecMeta(txn, c, e.Record)
			if err != nil {
				return err
			}
			if !e.Base.Equal(m.heads) {
				return &ConflictError{Record: e.Record}
			}
			if !found {
				u.Records++
			}
			old := m
			head++
			m.seq, m.heads = head, e.Heads
			m.tailBytes += int64(len(e.Changes))
			m.tailEntries++
			u.Bytes += int64(len(e.Changes))
			if err := txn.Set(logKey(c, head), encodeLogEntry(e)); err != nil {
				return err
			}
			if err := txn.Set(tailKey(c, e.Record, head), binary.AppendUvarint(nil, uint64(len(e.Changes)))); err != nil {
				return err
			}
			if err := putRecMeta(txn, c, e.Record, old, m); err != nil {
				return err
			}
		}
		if err := txn.Set(collKey("usage", c), encodeUsage(u)); err != nil {
			return err
		}
		return putUint64(txn, collKey("head", c), head)
	})
	if errors.Is(err, badger.ErrTxnTooBig) {
		return 0, fmt.Errorf("%w: %d entries to %s/%s (%w)", ErrAppendTooLarge, len(entries), c.Tenant, c.Collection, err)
	}
	if err != nil {
		return 0, err
	}
	return head, nil
}

// putRecMeta writes a record's meta, and marks or unmarks it as a
// compaction candidate when that changes from what old said: the mark is
// written only then, not on every append, so the candidates' keys do not
// pile up versions that every scan of them would skip.
func putRecMeta(txn *badger.Txn, c Coll, record string, old, m recMeta) error {
	if err := txn.Set(recKey("rec", c, record), m.encode()); err != nil {
		return err
	}
	was := old.candidate()
	switch now := m.candidate(); {
	case now && !was:
		return txn.Set(recKey("cand", c, record), nil)
	case !now && was:
		return txn.Delete(recKey("cand", c, record))
	}
	return nil
}

func (m recMeta) candidate() bool { return NeedsCompaction(m.snapBytes, m.tailBytes, m.tailEntries) }

func getUsage(txn *badger.Txn, c Coll) (Usage, error) {
	item, err := txn.Get(collKey("usage", c))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return Usage{}, nil
	}
	if err != nil {
		return Usage{}, err
	}
	var u Usage
	err = item.Value(func(v []byte) (err error) { u, err = decodeUsage(v); return })
	return u, err
}

// Record implements Store.
func (s *BadgerStore) Record(ctx context.Context, c Coll, record string) (Record, error) {
	var r Record
	err := s.view(ctx, func(txn *badger.Txn) error {
		m, ok, err := getRecMeta(txn, c, record)
		if err != nil {
			return fmt.Errorf("record %q: %w", record, err)
		}
		if !ok {
			return fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, ErrNotFound)
		}
		r, err = readRecord(txn, c, record, m)
		return err
	})
	return r, err
}

// readRecord reads a record's snapshot and tail, checking them against its
// meta: a store whose bytes do not match its bookkeeping is damaged.
func readRecord(txn *badger.Txn, c Coll, record string, m recMeta) (Record, error) {
	r := Record{ID: record, Heads: m.heads, Seq: m.seq, SnapSeq: m.snapSeq}
	if m.snapSeq > 0 {
		item, err := txn.Get(recKey("snap", c, record))
		if err != nil {
			return Record{}, fmt.Errorf("%w: record %q: snapshot: %v", errCorrupt, record, err)
		}
		if r.Snapshot, err = item.ValueCopy(nil); err != nil {
			return Record{}, err
		}
	}
	r.Tail = make([]byte, 0, m.tailBytes)
	// From the first entry after the snapshot: the tail keys of earlier
	// compactions are deleted, and seeking past them skips their versions.
	prefix := tailPrefix(c, record)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	for it.Seek(tailKey(c, record, m.snapSeq+1)); it.Valid(); it.Next() {
		seq := binary.BigEndian.Uint64(it.Item().Key()[len(prefix):])
		item, err := txn.Get(logKey(c, seq))
		if err != nil {
			return Record{}, fmt.Errorf("%w: record %q: tail entry %d: %v", errCorrupt, record, seq, err)
		}
		err = item.Value(func(v []byte) error {
			e, err := decodeLogEntry(seq, v)
			r.Tail = append(r.Tail, e.Changes...)
			return err
		})
		if err != nil {
			return Record{}, fmt.Errorf("record %q: %w", record, err)
		}
		r.TailEntries++
	}
	if int64(len(r.Snapshot)) != m.snapBytes || int64(len(r.Tail)) != m.tailBytes || int64(r.TailEntries) != m.tailEntries {
		return Record{}, fmt.Errorf("%w: record %q holds %d+%d bytes in %d entries, its meta says %d+%d in %d",
			errCorrupt, record, len(r.Snapshot), len(r.Tail), r.TailEntries, m.snapBytes, m.tailBytes, m.tailEntries)
	}
	return r, nil
}

// Records implements Store.
func (s *BadgerStore) Records(ctx context.Context, c Coll, after string, limit int) ([]Record, error) {
	if limit <= 0 {
		return nil, s.view(ctx, func(*badger.Txn) error { return nil })
	}
	var out []Record
	err := s.view(ctx, func(txn *badger.Txn) error {
		prefix := collPrefix("rec", c)
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: min(limit, 100), Prefix: prefix})
		defer it.Close()
		// record+"\x00" is the least key above record itself.
		start := prefix
		if after != "" {
			start = append(recKey("rec", c, after), 0)
		}
		for it.Seek(start); it.Valid() && len(out) < limit; it.Next() {
			id := string(it.Item().Key()[len(prefix):])
			var m recMeta
			err := it.Item().Value(func(v []byte) (err error) { m, err = decodeRecMeta(v); return })
			if err != nil {
				return fmt.Errorf("record %q: %w", id, err)
			}
			r, err := readRecord(txn, c, id, m)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// Log implements Store.
func (s *BadgerStore) Log(ctx context.Context, c Coll, after uint64, limit int) ([]LogEntry, error) {
	var out []LogEntry
	err := s.view(ctx, func(txn *badger.Txn) error {
		horizon, err := getUint64(txn, collKey("horizon", c))
		if err != nil {
			return err
		}
		if after < horizon {
			return &TruncatedError{Horizon: horizon}
		}
		if limit <= 0 || after == math.MaxUint64 {
			return nil
		}
		it := txn.NewIterator(badger.IteratorOptions{
			PrefetchValues: true,
			PrefetchSize:   min(limit, 100),
			Prefix:         collPrefix("log", c),
		})
		defer it.Close()
		for it.Seek(logKey(c, after+1)); it.Valid() && len(out) < limit; it.Next() {
			k := it.Item().Key()
			seq := binary.BigEndian.Uint64(k[len(k)-8:])
			err := it.Item().Value(func(v []byte) error {
				e, err := decodeLogEntry(seq, v)
				out = append(out, e)
				return err
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// Head implements Store.
func (s *BadgerStore) Head(ctx context.Context, c Coll) (uint64, error) {
	var head uint64
	err := s.view(ctx, func(txn *badger.Txn) (err error) {
		head, err = getUint64(txn, collKey("head", c))
		return err
	})
	return head, err
}

// Compact implements Store.
func (s *BadgerStore) Compact(ctx context.Context, c Coll, record string, snap []byte, upTo uint64) error {
	if err := checkColl(c); err != nil {
		return err
	}
	return s.update(ctx, c, func(txn *badger.Txn) error {
		m, ok, err := getRecMeta(txn, c, record)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, ErrNotFound)
		}
		if upTo > m.seq || upTo <= m.snapSeq {
			return &ConflictError{Record: record}
		}
		old := m
		prefix := tailPrefix(c, record)
		var drop [][]byte
		var dropped int64
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
		for it.Seek(tailKey(c, record, m.snapSeq+1)); it.Valid(); it.Next() {
			k := it.Item().Key()
			if binary.BigEndian.Uint64(k[len(prefix):]) > upTo {
				break
			}
			n, err := tailLen(it.Item())
			if err != nil {
				it.Close()
				return err
			}
			drop = append(drop, it.Item().KeyCopy(nil))
			dropped += n
			m.tailEntries--
		}
		it.Close()
		for _, k := range drop {
			if err := txn.Delete(k); err != nil {
				return err
			}
		}
		u, err := getUsage(txn, c)
		if err != nil {
			return err
		}
		u.Bytes += int64(len(snap)) - m.snapBytes - dropped
		m.tailBytes -= dropped
		m.snapSeq, m.snapBytes = upTo, int64(len(snap))
		if err := txn.Set(recKey("snap", c, record), snap); err != nil {
			return err
		}
		if err := txn.Set(collKey("usage", c), encodeUsage(u)); err != nil {
			return err
		}
		return putRecMeta(txn, c, record, old, m)
	})
}

func tailLen(item *badger.Item) (int64, error) {
	var n uint64
	err := item.Value(func(v []byte) error {
		var k int
		if n, k = binary.Uvarint(v); k <= 0 {
			return fmt.Errorf("%w: tail key %q", errCorrupt, item.Key())
		}
		return nil
	})
	return int64(n), err
}

// CompactionCandidates implements Store.
func (s *BadgerStore) CompactionCandidates(ctx context.Context, limit int) ([]Candidate, error) {
	var out []Candidate
	err := s.view(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefixCand})
		defer it.Close()
		for it.Rewind(); it.Valid() && len(out) < limit; it.Next() {
			c, rec, ok := splitCollKey(it.Item().Key())
			if !ok {
				return fmt.Errorf("%w: candidate key %q", errCorrupt, it.Item().Key())
			}
			out = append(out, Candidate{Coll: c, Record: rec})
		}
		return nil
	})
	return out, err
}

// truncateBatch bounds the entries one Truncate transaction drops.
const truncateBatch = 10_000

// Truncate implements Store.
func (s *BadgerStore) Truncate(ctx context.Context, c Coll, upTo uint64) (uint64, error) {
	if err := checkColl(c); err != nil {
		return 0, err
	}
	for {
		var horizon uint64
		more := false
		err := s.update(ctx, c, func(txn *badger.Txn) error {
			var err error
			if horizon, err = getUint64(txn, collKey("horizon", c)); err != nil {
				return err
			}
			head, err := getUint64(txn, collKey("head", c))
			if err != nil {
				return err
			}
			upTo := min(upTo, head)
			snapSeq := map[string]uint64{}
			for n := 0; horizon < upTo; n++ {
				if n == truncateBatch {
					more = true
					break
				}
				seq := horizon + 1
				item, err := txn.Get(logKey(c, seq))
				if err != nil {
					return fmt.Errorf("%w: log entry %d: %v", errCorrupt, seq, err)
				}
				var rec string
				err = item.Value(func(v []byte) error {
					e, err := decodeLogEntry(seq, v)
					rec = e.Record
					return err
				})
				if err != nil {
					return err
				}
				ss, ok := snapSeq[rec]
				if !ok {
					m, _, err := getRecMeta(txn, c, rec)
					if err != nil {
						return err
					}
					ss, snapSeq[rec] = m.snapSeq, m.snapSeq
				}
				if ss < seq {
					break // the record's tail still holds it
				}
				if err := txn.Delete(logKey(c, seq)); err != nil {
					return err
				}
				horizon = seq
			}
			return putUint64(txn, collKey("horizon", c), horizon)
		})
		if err != nil || !more {
			return horizon, err
		}
	}
}

// Usage implements Store.
func (s *BadgerStore) Usage(ctx context.Context, tenant string) (Usage, error) {
	var u Usage
	err := s.view(ctx, func(txn *badger.Txn) error {
		prefix := append(append([]byte("usage\x00"), tenant...), 0)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			err := it.Item().Value(func(v []byte) error {
				cu, err := decodeUsage(v)
				u.Bytes += cu.Bytes
				u.Records += cu.Records
				return err
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return u, err
}

// Stats implements Store. LogEntries counts the entries the logs hold
// (head minus horizon); Bytes is what the store's files take on disk
// (Badger's value log and memtables are long sparse files, so their
// lengths say little), or Badger's own estimate for a store in memory.
func (s *BadgerStore) Stats(ctx context.Context) (StoreStats, error) {
	var st StoreStats
	err := s.view(ctx, func(txn *badger.Txn) error {
		for _, p := range []struct {
			prefix []byte
			sign   int64
		}{{prefixHead, 1}, {prefixHorizon, -1}} {
			it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, Prefix: p.prefix})
			for it.Rewind(); it.Valid(); it.Next() {
				err := it.Item().Value(func(v []byte) error {
					if len(v) != 8 {
						return fmt.Errorf("%w: %q holds %d bytes", errCorrupt, it.Item().Key(), len(v))
					}
					st.LogEntries += p.sign * int64(binary.BigEndian.Uint64(v))
					return nil
				})
				if err != nil {
					it.Close()
					return err
				}
			}
			it.Close()
		}
		return nil
	})
	if err != nil {
		return StoreStats{}, err
	}
	if s.opts.InMemory {
		lsm, vlog := s.db.Size()
		st.Bytes = lsm + vlog
		return st, nil
	}
	if st.Bytes, err = badgerdir.DiskUsage(s.db.Opts().Dir); err != nil {
		return StoreStats{}, fmt.Errorf("relay: store size: %w", err)
	}
	return st, nil
}

// migrateV1 turns a format-1 store, which kept each record's whole document,
// into format 2: the document becomes the record's snapshot, holding every
// entry up to the record's last, with an empty tail. It runs in batches
// (a store may hold more documents than one transaction carries); the
// format marker is written last, so a migration cut short runs again.
func migrateV1(db *badger.DB) error {
	for {
		done := true
		err := db.Update(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefixDocV1, PrefetchValues: true})
			var keys [][]byte
			var vals [][]byte
			for it.Rewind(); it.Valid(); it.Next() {
				if len(keys) == 1000 {
					done = false
					break
				}
				v, err := it.Item().ValueCopy(nil)
				if err != nil {
					it.Close()
					return err
				}
				keys, vals = append(keys, it.Item().KeyCopy(nil)), append(vals, v)
			}
			it.Close()
			for i, k := range keys {
				c, rec, ok := splitCollKey(k)
				if !ok {
					return fmt.Errorf("%w: document key %q", errCorrupt, k)
				}
				seq, heads, doc, err := decodeDocV1(vals[i])
				if err != nil {
					return err
				}
				u, err := getUsage(txn, c)
				if err != nil {
					return err
				}
				u.Bytes += int64(len(doc))
				u.Records++
				m := recMeta{seq: seq, snapSeq: seq, snapBytes: int64(len(doc)), heads: heads}
				for _, kv := range [][2][]byte{
					{recKey("rec", c, rec), m.encode()},
					{recKey("snap", c, rec), doc},
					{collKey("usage", c), encodeUsage(u)},
				} {
					if err := txn.Set(kv[0], kv[1]); err != nil {
						return err
					}
				}
				if err := txn.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("relay: migrating a format-1 store: %w", err)
		}
		if done {
			return db.Update(func(txn *badger.Txn) error {
				return txn.Set(keyFormat, binary.BigEndian.AppendUint32(nil, badgerFormat))
			})
		}
	}
}
