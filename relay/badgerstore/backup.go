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
	if _, err := db.Backup(w, 0); err != nil {
		return "", fmt.Errorf("relay: backup: %w", err)
	}
	return incarnation, nil
}
