//go:build !linux

package badgerdir

import "os"

// FsyncLogsDirect: elsewhere, Badger's own DB.Sync fsyncs its active logs
// (see Syncer.SyncNow).
var FsyncLogsDirect = false

// datasync fsyncs f.
func datasync(f *os.File) error { return f.Sync() }
