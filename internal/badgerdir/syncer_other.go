//go:build !linux

package badgerdir

// FsyncLogsDirect: elsewhere, Badger's own DB.Sync fsyncs its active logs
// (see Syncer.SyncNow).
var FsyncLogsDirect = false
