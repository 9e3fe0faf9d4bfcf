package badgerstore

import (
	"encoding/binary"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

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
