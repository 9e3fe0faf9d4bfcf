//go:build unix

package badgerdir

import (
	"errors"
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
