package badgerstore

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// A migration transaction takes at most migrateBatchDocs documents and,
// past its first, migrateBatchBytes of them: Badger refuses a transaction
// over 15% of a memtable (1.2 MiB; see memTableSize), counting values
// under 1 MiB in full. Variables for the tests.
var (
	migrateBatchDocs  = 1000
	migrateBatchBytes = 512 << 10
)

// migrateV1 turns a format-1 store, which kept each record's whole document,
// into format 2: the document becomes the record's snapshot, holding every
// entry up to the record's last, with an empty tail. It runs in batches
// (a store may hold more documents than one transaction carries), bounded
// by documents and by bytes, since each document is written again as a
// snapshot; the format marker is written last, so a migration cut short
// runs again. sync fsyncs each batch before the next: a later batch must
// not survive a power loss without the usage counts of an earlier one.
func migrateV1(db *badger.DB, sync func() error) error {
	maxDocs := migrateBatchDocs
	for {
		done := true
		n := 0
		err := db.Update(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefixDocV1, PrefetchValues: true})
			var keys [][]byte
			var vals [][]byte
			size := 0
			for it.Rewind(); it.Valid(); it.Next() {
				if len(keys) == maxDocs || len(keys) > 0 && size+int(it.Item().ValueSize()) > migrateBatchBytes {
					done = false
					break
				}
				v, err := it.Item().ValueCopy(nil)
				if err != nil {
					it.Close()
					return err
				}
				keys, vals = append(keys, it.Item().KeyCopy(nil)), append(vals, v)
				size += len(v)
			}
			it.Close()
			n = len(keys)
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
		if errors.Is(err, badger.ErrTxnTooBig) && n > 1 {
			// The bytes bound is an estimate of Badger's: halve the batch.
			maxDocs = n / 2
			continue
		}
		if err == nil {
			err = sync()
		}
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
