package badgerstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/relay"
)

// putRecMeta writes a record's meta, and marks or unmarks it as a
// compaction candidate when that changes from what old said: the mark is
// written only then, not on every append, so the candidates' keys do not
// pile up versions that every scan of them would skip.
func putRecMeta(txn *badger.Txn, c relay.Coll, record string, old, m recMeta) error {
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

func (m recMeta) candidate() bool {
	return relay.NeedsCompaction(m.snapBytes, m.tailBytes, m.tailEntries)
}

func getUsage(txn *badger.Txn, c relay.Coll) (relay.Usage, error) {
	item, err := txn.Get(collKey("usage", c))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return relay.Usage{}, nil
	}
	if err != nil {
		return relay.Usage{}, err
	}
	var u relay.Usage
	err = item.Value(func(v []byte) (err error) { u, err = decodeUsage(v); return })
	return u, err
}

// Record implements relay.Store.
func (s *Store) Record(ctx context.Context, c relay.Coll, record string) (relay.Record, error) {
	var r relay.Record
	err := s.view(ctx, func(txn *badger.Txn) error {
		m, ok, err := getRecMeta(txn, c, record)
		if err != nil {
			return fmt.Errorf("record %q: %w", record, err)
		}
		if !ok {
			return &notFoundError{c: c, record: record}
		}
		r, err = readRecord(txn, c, record, m)
		return err
	})
	return r, err
}

// notFoundError is a record the store does not hold (relay.ErrNotFound).
// The relay reads every record a push creates first, so the error is
// formatted only when its text is asked for.
type notFoundError struct {
	c      relay.Coll
	record string
}

func (e *notFoundError) Error() string {
	return fmt.Sprintf("record %q in %s/%s: %v", e.record, e.c.Tenant, e.c.Collection, relay.ErrNotFound)
}

func (e *notFoundError) Unwrap() error { return relay.ErrNotFound }

// readRecord reads a record's snapshot and tail, checking them against its
// meta: a store whose bytes do not match its bookkeeping is damaged.
func readRecord(txn *badger.Txn, c relay.Coll, record string, m recMeta) (relay.Record, error) {
	r := relay.Record{ID: record, Heads: m.heads, Seq: m.seq, SnapSeq: m.snapSeq}
	if m.snapSeq > 0 {
		item, err := txn.Get(recKey("snap", c, record))
		if err != nil {
			return relay.Record{}, fmt.Errorf("%w: record %q: snapshot: %v", errCorrupt, record, err)
		}
		if r.Snapshot, err = item.ValueCopy(nil); err != nil {
			return relay.Record{}, err
		}
	}
	r.Tail = make([]byte, 0, m.tailBytes)
	// From the first entry after the snapshot: the tail keys of earlier
	// compactions are deleted, and seeking past them skips their versions.
	// Up to the record's last entry: later tail keys belong to an append
	// not published yet (see appendSplit).
	prefix := tailPrefix(c, record)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	for it.Seek(tailKey(c, record, m.snapSeq+1)); it.Valid(); it.Next() {
		seq := binary.BigEndian.Uint64(it.Item().Key()[len(prefix):])
		if seq > m.seq {
			break
		}
		item, err := txn.Get(logKey(c, seq))
		if err != nil {
			return relay.Record{}, fmt.Errorf("%w: record %q: tail entry %d: %v", errCorrupt, record, seq, err)
		}
		err = item.Value(func(v []byte) error {
			e, err := decodeLogEntry(seq, v)
			r.Tail = append(r.Tail, e.Changes...)
			return err
		})
		if err != nil {
			return relay.Record{}, fmt.Errorf("record %q: %w", record, err)
		}
		r.TailEntries++
	}
	if int64(len(r.Snapshot)) != m.snapBytes || int64(len(r.Tail)) != m.tailBytes || int64(r.TailEntries) != m.tailEntries {
		return relay.Record{}, fmt.Errorf("%w: record %q holds %d+%d bytes in %d entries, its meta says %d+%d in %d",
			errCorrupt, record, len(r.Snapshot), len(r.Tail), r.TailEntries, m.snapBytes, m.tailBytes, m.tailEntries)
	}
	return r, nil
}

// Records implements relay.Store.
func (s *Store) Records(ctx context.Context, c relay.Coll, after string, limit int) ([]relay.Record, error) {
	if limit <= 0 {
		return nil, s.view(ctx, func(*badger.Txn) error { return nil })
	}
	var out []relay.Record
	err := s.viewDurable(ctx, c, func(txn *badger.Txn) error {
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

// Log implements relay.Store.
func (s *Store) Log(ctx context.Context, c relay.Coll, after uint64, limit int) ([]relay.LogEntry, error) {
	var out []relay.LogEntry
	err := s.viewDurable(ctx, c, func(txn *badger.Txn) error {
		horizon, err := getUint64(txn, collKey("horizon", c))
		if err != nil {
			return err
		}
		if after < horizon {
			return &relay.TruncatedError{Horizon: horizon}
		}
		// Entries past the head belong to an append not published yet
		// (see appendSplit): a cursor never names one.
		head, err := getUint64(txn, collKey("head", c))
		if err != nil {
			return err
		}
		if limit <= 0 || after >= head {
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
			if seq > head {
				break
			}
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

// Head implements relay.Store.
func (s *Store) Head(ctx context.Context, c relay.Coll) (uint64, error) {
	var head uint64
	err := s.viewDurable(ctx, c, func(txn *badger.Txn) (err error) {
		head, err = getUint64(txn, collKey("head", c))
		return err
	})
	return head, err
}

// Usage implements relay.Store.
func (s *Store) Usage(ctx context.Context, tenant string) (relay.Usage, error) {
	var u relay.Usage
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

// Stats implements relay.Store. LogEntries counts the entries the logs hold
// (head minus horizon); Bytes is what the store's files take on disk
// (Badger's value log and memtables are long sparse files, so their
// lengths say little), or Badger's own estimate for a store in memory.
func (s *Store) Stats(ctx context.Context) (relay.StoreStats, error) {
	var st relay.StoreStats
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
		return relay.StoreStats{}, err
	}
	if s.opts.InMemory {
		lsm, vlog := s.db.Size()
		st.Bytes = lsm + vlog
		return st, nil
	}
	if st.Bytes, err = badgerdir.DiskUsage(s.db.Opts().Dir); err != nil {
		return relay.StoreStats{}, fmt.Errorf("relay: store size: %w", err)
	}
	return st, nil
}
