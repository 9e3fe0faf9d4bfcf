package badgerdir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dgraph-io/badger/v4"
)

// ErrLocked means another process has the store open: a running relay or
// app, or a ferry command. errors.Is finds it in the error of Open and
// OpenReadOnly.
var ErrLocked = errors.New("the store is in use by another process")

// ErrNoStore means a folder holds no Badger store where one must exist.
var ErrNoStore = errors.New("no store in the folder")

// ErrNeedsRepair means a read-only open was refused because a crash left
// the store in a state that only a read-write open repairs: open it once
// for writing (start the relay or the app), then try again.
var ErrNeedsRepair = errors.New("a crash left the store needing repair, which only opening it for writing does: start the relay or the app once, then try again")

// memHeaderSize is the header Badger writes at the start of a memtable's
// write-ahead log (its key ID and IV).
const memHeaderSize = 20

// tornMemLog returns the name of a memtable log in dir cut inside its
// header, "" if none. A read-write open truncates such a log; a read-only
// open replays it, and Badger then asserts its log is not read-only, a
// failure it reports with log.Fatal: the process ends, which no recover
// catches.
func tornMemLog(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		if filepath.Ext(e.Name()) != ".mem" || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return "", err
		}
		if n := info.Size(); n > 0 && n < memHeaderSize {
			return e.Name(), nil
		}
	}
	return "", nil
}

// Open opens a Badger store whose folder Prepare accepted (or an in-memory
// one), verifying checksums and turning Badger's panics into ErrDamaged
// (see openBadger). A folder another process holds gives an error matching
// ErrLocked that says what to do: Badger flattens the lock failure into
// text, so it is recognized by probing the folder's lock after the open
// failed.
func Open(opts badger.Options) (*badger.DB, error) {
	if opts.ReadOnly && !opts.InMemory {
		name, err := tornMemLog(opts.Dir)
		if err != nil {
			return nil, err
		}
		if name != "" {
			return nil, fmt.Errorf("%w (its write-ahead log %s is cut short inside its header)", ErrNeedsRepair, name)
		}
	}
	db, err := openBadger(opts)
	if err != nil && !opts.InMemory && lockedByOther(opts.Dir, !opts.ReadOnly) {
		return nil, &LockedError{Dir: opts.Dir, Err: err}
	}
	return db, err
}

// OpenReadOnly opens the existing store in dir read-only: nothing in dir is
// created, changed or repaired. A folder without a store (no MANIFEST) gives
// ErrNoStore, and one that another process has open for writing gives
// ErrLocked. Its MANIFEST, key registry and tables are verified first, as
// Prepare does, so damage gives ErrDamaged rather than Badger's own error
// or panic. A store that a crash left needing repair may fail to open
// (ErrNeedsRepair, where Badger would end the process): only a read-write
// open repairs it.
func OpenReadOnly(dir string, opts badger.Options) (*badger.DB, error) {
	if _, err := os.Stat(filepath.Join(dir, "MANIFEST")); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s has no MANIFEST", ErrNoStore, dir)
		}
		return nil, err
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	err = verifyStore(dir)
	unlock()
	if err != nil {
		return nil, err
	}
	opts.Dir, opts.ValueDir = dir, dir
	opts.ReadOnly, opts.InMemory = true, false
	return Open(opts)
}

// LockedError is the error of an open refused because another process
// holds the store: errors.Is matches it with ErrLocked, and Badger's own
// error stays in the chain.
type LockedError struct {
	Dir string // the store's folder
	Err error  // Badger's error, or the folder lock's
}

// Error says what to do, without the folder: the caller's context names it.
func (e *LockedError) Error() string {
	return "the store is in use by another process (a running relay or app, or a ferry command): stop it, then try again"
}

func (e *LockedError) Unwrap() []error { return []error{ErrLocked, e.Err} }
