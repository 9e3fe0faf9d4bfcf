//go:build linux

package badgerdir

import (
	"os"
	"syscall"
)

// FsyncLogsDirect: on Linux, a file's fsync writes back what was written
// to it through a shared mapping, as msync does (see Syncer.SyncNow).
// Benchmarks may turn it off to compare with Badger's DB.Sync.
var FsyncLogsDirect = true

// datasync writes back f's data and what reading it back needs (its
// size, its blocks), not its times: the msync Badger makes with
// SyncWrites is the same. A full fsync also commits the file's new
// modification time to the journal at every sync, which costs CPU here
// for nothing a reader of the log needs.
func datasync(f *os.File) error {
	c, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := c.Control(func(fd uintptr) { serr = syscall.Fdatasync(int(fd)) }); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}
