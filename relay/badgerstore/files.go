package badgerstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"

	"github.com/dgraph-io/badger/v4"
	"github.com/google/uuid"

	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/relay"
)

// checkStoreDir refuses a folder that is not a relay store, writing
// nothing to it, and creates a missing one.
//
// Files that are not a Badger database are refused before Badger would
// create its own beside them, a damaged store is refused, and what a crash
// during an earlier open left is repaired (see badgerdir.Prepare). A Badger
// database is opened read-only first, because a read-write open creates
// files even in a database that then turns out to be someone else's.
func checkStoreDir(dir string) error {
	exists, err := badgerdir.Prepare(dir)
	switch {
	case errors.Is(err, badgerdir.ErrForeign):
		return fmt.Errorf("%w: %v", relay.ErrNotRelayStore, err)
	case errors.Is(err, badgerdir.ErrDamaged):
		return damaged(err)
	case err != nil:
		return fmt.Errorf("relay: open store: %w", err)
	}
	if !exists {
		return nil
	}
	return probeStore(dir)
}

// probeStore checks the format marker of the Badger database in dir through
// a read-only open. If Badger cannot open it read-only (it is in use, or a
// crash left a torn write-ahead log that only a read-write open repairs),
// the read-write open that follows decides, and checks the marker itself.
func probeStore(dir string) error {
	db, err := badgerdir.Open(badger.DefaultOptions(dir).
		WithReadOnly(true).
		WithLogger(nil).
		WithBlockCacheSize(1 << 20))
	if err != nil {
		return nil
	}
	defer badgerdir.Close(db)
	err = db.View(func(txn *badger.Txn) error {
		_, _, found, err := marker.Read(txn)
		if err == nil && !found && !badgerdir.Empty(txn) {
			err = fmt.Errorf("%w: database has data but no relay format marker", relay.ErrNotRelayStore)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("relay: open store %s: %w", dir, err)
	}
	return nil
}

// damaged puts a badgerdir.ErrDamaged under relay.ErrStoreDamaged, with what the
// operator can do about it.
func damaged(err error) error {
	return fmt.Errorf("%w: %w. Move the folder aside and restore the latest backup into a new one (ferry restore)", relay.ErrStoreDamaged, err)
}

// Backup writes a full backup of the store to w: a consistent snapshot as
// of the call, in Badger's backup format. Appends may continue meanwhile.
// Load it with Restore.
func (s *Store) Backup(w io.Writer) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return relay.ErrStoreClosed
	}
	return backup(s.db, w)
}

// restoreFenceGap is added to every collection's fence counter by a restore.
// The backed-up store may have granted fences after the backup was taken;
// without the gap the restored store could grant the same numbers again, and
// a device still holding one of them would pass the fence check under
// someone else's lease.
const restoreFenceGap = 1 << 32

// Restore creates a store in dir from a backup written by
// (*Store).Backup. dir must be missing or empty: a restore never
// merges into existing data. The restored store gets a new incarnation, so
// devices can tell that their cursors and acknowledged heads may be ahead
// of its log; its leases are dropped and its fence counters raised by 2^32,
// so that no fence granted after the backup is granted again. On failure
// dir is left empty.
func Restore(dir string, r io.Reader) error {
	entries, err := os.ReadDir(dir)
	created := errors.Is(err, os.ErrNotExist)
	switch {
	case created:
	case err != nil:
		return fmt.Errorf("relay: restore into %s: %w", dir, err)
	case len(entries) > 0:
		return fmt.Errorf("relay: restore into %s: %w: folder holds %d entries", dir, os.ErrExist, len(entries))
	}
	db, err := openBadger(dir, (*Options)(nil).withDefaults())
	if err != nil {
		return fmt.Errorf("relay: restore into %s: %w", dir, err)
	}
	err = restore(db, r)
	if cerr := badgerdir.Close(db); err == nil {
		err = cerr
	}
	if err != nil {
		// dir was empty or missing, so everything in it is ours to remove.
		wipe(dir, created)
		return fmt.Errorf("relay: restore into %s: %w", dir, err)
	}
	return nil
}

func restore(db *badger.DB, r io.Reader) error {
	if err := db.Load(r, 256); err != nil {
		return fmt.Errorf("load backup: %w", err)
	}
	var fenceKeys, leaseKeys [][]byte
	var fences []uint64
	err := db.View(func(txn *badger.Txn) error {
		if _, _, found, err := marker.Read(txn); err != nil || !found {
			if err == nil {
				err = fmt.Errorf("%w: backup holds no relay format marker", relay.ErrNotRelayStore)
			}
			return err
		}
		leaseKeys = keysWithPrefix(txn, prefixLease)
		fenceKeys = keysWithPrefix(txn, prefixFence)
		for _, k := range fenceKeys {
			f, err := getUint64(txn, k)
			if err != nil {
				return err
			}
			fences = append(fences, f)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Not one transaction (there may be too many collections for one), but
	// nobody can open the store until the restore returns, and a failed
	// restore is wiped.
	wb := db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range leaseKeys {
		if err := wb.Delete(k); err != nil {
			return err
		}
	}
	for i, k := range fenceKeys {
		if fences[i] > math.MaxUint64-restoreFenceGap {
			return fmt.Errorf("fence counter %q at %d cannot be raised", k, fences[i])
		}
		if err := wb.Set(k, binary.BigEndian.AppendUint64(nil, fences[i]+restoreFenceGap)); err != nil {
			return err
		}
	}
	if err := wb.Set(keyIncarnation, []byte(uuid.NewString())); err != nil {
		return err
	}
	return wb.Flush()
}

func keysWithPrefix(txn *badger.Txn, prefix []byte) [][]byte {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	var keys [][]byte
	for it.Rewind(); it.Valid(); it.Next() {
		keys = append(keys, it.Item().KeyCopy(nil))
	}
	return keys
}

// wipe empties a folder a failed restore wrote into.
func wipe(dir string, created bool) {
	if created {
		os.RemoveAll(dir)
		return
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}
