package badgerstore

import (
	"errors"
	"fmt"
	"io"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/relay"
)

// BackupDir writes a backup of the relay store in dir to w, in the
// format Restore reads, and returns the store's incarnation. It
// opens the store read-only, so nothing in dir is created or changed: a
// folder without a store, or with another kind of store, gives
// relay.ErrNotRelayStore; a store a running relay holds gives an error matching
// badgerdir.ErrLocked. A store a crash left needing repair fails to open
// read-only; opening it once with Open (starting the relay)
// repairs it.
func BackupDir(dir string, w io.Writer) (incarnation string, err error) {
	db, err := badgerdir.OpenReadOnly(dir, badger.DefaultOptions(dir).
		WithLogger(nil).
		WithBlockCacheSize(8<<20))
	if errors.Is(err, badgerdir.ErrNoStore) {
		return "", fmt.Errorf("%w: %v", relay.ErrNotRelayStore, err)
	}
	if err != nil {
		return "", fmt.Errorf("relay: open store %s read-only: %w", dir, err)
	}
	defer db.Close()
	err = db.View(func(txn *badger.Txn) error {
		var found bool
		incarnation, _, found, err = marker.Read(txn)
		if err == nil && !found {
			err = fmt.Errorf("%w: %s has no relay format marker", relay.ErrNotRelayStore, dir)
		}
		return err
	})
	if err != nil {
		return "", err
	}
	if err := backup(db, w); err != nil {
		return "", err
	}
	return incarnation, nil
}

// backup writes db's backup to w, once every value in it has been read
// whole. Badger's backup skips, with a line in its log and no error, every
// key whose value it cannot read, and a value log cut short reads as empty
// values with no error at all: from a damaged value log it would write a
// backup without those records, or with them empty, and say nothing. Each
// value's checksum is checked as it is read (badgerdir opens every store
// so).
// valueSizeSlack is how much shorter than Item.ValueSize a whole value
// may be: for a value in the value log, ValueSize takes its entry's
// header to be 6 bytes, which is up to 22.
const valueSizeSlack = 16

func backup(db *badger.DB, w io.Writer) error {
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{AllVersions: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			if item.IsDeletedOrExpired() {
				continue
			}
			err := item.Value(func(v []byte) error {
				if n := item.ValueSize(); int64(len(v)) < n-valueSizeSlack {
					return fmt.Errorf("%d of its %d bytes were read", len(v), n)
				}
				return nil
			})
			if err != nil {
				return damaged(fmt.Errorf("key %q: its value cannot be read: %w", item.Key(), err))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("relay: backup: %w", err)
	}
	if _, err := db.Backup(w, 0); err != nil {
		return fmt.Errorf("relay: backup: %w", err)
	}
	return nil
}
