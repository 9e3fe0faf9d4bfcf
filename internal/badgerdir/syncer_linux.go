//go:build linux

package badgerdir

// FsyncLogsDirect: on Linux, a file's fsync writes back what was written
// to it through a shared mapping, as msync does (see Syncer.SyncNow).
// Benchmarks may turn it off to compare with Badger's DB.Sync.
var FsyncLogsDirect = true
