//go:build unix

package badgerdir

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockedByOther reports whether another open file holds dir's flock (the
// lock Badger takes: shared when read-only, exclusive otherwise) in a way
// that excludes an open of the given kind. The probe's lock is released at
// once.
func lockedByOther(dir string, exclusive bool) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	err = syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
	if err == nil {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	}
	return errors.Is(err, syscall.EWOULDBLOCK)
}

// lockDir takes the lock Badger takes on a store folder (flock on the
// folder itself), so nothing else opens the store while Prepare looks at
// it. A shared lock suffices: a read-write Badger needs it exclusive. It
// returns an error wrapping os.ErrNotExist if dir is missing, and one
// wrapping ErrLocked if the store is open.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &LockedError{Dir: dir, Err: fmt.Errorf("%s: %w", dir, err)}
		}
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	// Closing the folder releases the lock.
	return func() { f.Close() }, nil
}
