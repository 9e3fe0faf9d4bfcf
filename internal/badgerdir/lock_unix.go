//go:build unix

package badgerdir

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockDir takes the lock Badger takes on a store folder (flock on the
// folder itself), so nothing else opens the store while Prepare looks at
// it. A shared lock suffices: a read-write Badger needs it exclusive. It
// returns an error wrapping os.ErrNotExist if dir is missing.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s is in use: a store is open in it, in this process or another", dir)
		}
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	// Closing the folder releases the lock.
	return func() { f.Close() }, nil
}
