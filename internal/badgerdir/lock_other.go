//go:build !unix

package badgerdir

import "os"

// lockedByOther cannot probe Badger's lock on this system.
func lockedByOther(string, bool) bool { return false }

// lockDir only checks that dir exists: Badger's folder lock is a Unix
// flock, and elsewhere Badger's own open is the only guard.
func lockDir(dir string) (unlock func(), err error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, err
	}
	return func() {}, nil
}
