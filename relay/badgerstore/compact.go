package badgerstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/relay"
)

// Compact implements relay.Store. One transaction writes the snapshot, the
// meta, the usage and the candidate mark, and deletes the tail keys the
// snapshot replaces as far as they fit; the rest are deleted in more
// transactions, under the same lock. A crash between leaves tail keys the
// snapshot holds, which nothing reads: every read of a tail starts after
// the snapshot's last entry.
func (s *Store) Compact(ctx context.Context, c relay.Coll, record string, snap []byte, upTo uint64) error {
	if err := relay.CheckColl(c); err != nil {
		return err
	}
	return s.locked(ctx, c, func() error {
		var drop [][]byte
		err := s.commitUpdate(c, func(txn *badger.Txn) error {
			m, ok, err := getRecMeta(txn, c, record)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, relay.ErrNotFound)
			}
			if upTo > m.seq || upTo <= m.snapSeq {
				return &relay.ConflictError{Record: record}
			}
			old := m
			prefix := tailPrefix(c, record)
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
			if err := putRecMeta(txn, c, record, old, m); err != nil {
				return err
			}
			for len(drop) > 0 {
				err := txn.Delete(drop[0])
				if errors.Is(err, badger.ErrTxnTooBig) {
					return nil // the rest in transactions of their own
				}
				if err != nil {
					return err
				}
				drop = drop[1:]
			}
			return nil
		})
		if err == nil && len(drop) > 0 {
			// The snapshot must not be lost while the tail it replaces
			// is: fsync it before deleting the rest.
			err = s.syncPart()
		}
		for err == nil && len(drop) > 0 {
			err = s.commitUpdate(c, func(txn *badger.Txn) error {
				for n := 0; len(drop) > 0; n++ {
					err := txn.Delete(drop[0])
					if errors.Is(err, badger.ErrTxnTooBig) && n > 0 {
						return nil
					}
					if err != nil {
						return err
					}
					drop = drop[1:]
				}
				return nil
			})
		}
		return err
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

// CompactionCandidates implements relay.Store.
func (s *Store) CompactionCandidates(ctx context.Context, limit int) ([]relay.Candidate, error) {
	var out []relay.Candidate
	err := s.view(ctx, func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefixCand})
		defer it.Close()
		for it.Rewind(); it.Valid() && len(out) < limit; it.Next() {
			c, rec, ok := splitCollKey(it.Item().Key())
			if !ok {
				return fmt.Errorf("%w: candidate key %q", errCorrupt, it.Item().Key())
			}
			out = append(out, relay.Candidate{Coll: c, Record: rec})
		}
		return nil
	})
	return out, err
}

// truncateBatch bounds the entries one Truncate transaction drops; fewer
// if a Badger transaction holds fewer.
const truncateBatch = 10_000

// Truncate implements relay.Store.
func (s *Store) Truncate(ctx context.Context, c relay.Coll, upTo uint64) (uint64, error) {
	if err := relay.CheckColl(c); err != nil {
		return 0, err
	}
	batch := truncateBatch
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
				if n == batch {
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
		if errors.Is(err, badger.ErrTxnTooBig) && batch > 1 {
			batch /= 2
			continue
		}
		if err != nil || !more {
			return horizon, err
		}
	}
}
