package badgerstore

import (
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/relay"
)

// OpenReadOnly opens the relay store in dir for reading, as
// ferry inspect does: nothing in dir is created, changed or repaired, and
// every write through the store fails. A folder without a store, or with
// another kind of store, gives relay.ErrNotRelayStore; a store a running relay
// holds, an error matching badgerdir.ErrLocked; a store in an older format,
// one that Open (starting the relay once) upgrades. A store a
// crash left needing repair fails to open read-only; Open
// repairs it.
func OpenReadOnly(dir string) (*Store, error) {
	db, err := badgerdir.OpenReadOnly(dir, badger.DefaultOptions(dir).
		WithLogger(nil).
		WithBlockCacheSize(8<<20))
	switch {
	case errors.Is(err, badgerdir.ErrNoStore):
		return nil, fmt.Errorf("%w: %v", relay.ErrNotRelayStore, err)
	case errors.Is(err, badgerdir.ErrDamaged):
		return nil, damaged(err)
	case err != nil:
		return nil, fmt.Errorf("relay: open store %s read-only: %w", dir, err)
	}
	s := &Store{db: db, opts: (&Options{}).withDefaults(), closing: make(chan struct{}), fsync: badgerdir.NewSyncer(db, "", true)}
	err = db.View(func(txn *badger.Txn) error {
		var format uint32
		var found bool
		var err error
		s.incarnation, format, found, err = marker.Read(txn)
		switch {
		case err != nil:
			return err
		case !found:
			return fmt.Errorf("%w: %s has no relay format marker", relay.ErrNotRelayStore, dir)
		case format < badgerFormat:
			return fmt.Errorf("relay: store %s is in format %d: start the relay on it once to upgrade it to format %d", dir, format, badgerFormat)
		}
		return nil
	})
	if err != nil {
		badgerdir.Close(db)
		return nil, err
	}
	return s, nil
}
