//go:build !unix

package badgerdir

// lockedByOther cannot probe Badger's lock on this system.
func lockedByOther(string, bool) bool { return false }
