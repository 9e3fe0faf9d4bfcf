//go:build linux

package replica

// fsyncLogsDirect: on Linux, a file's fsync writes back what was written
// to it through a shared mapping, as msync does (see syncer.syncNow).
var fsyncLogsDirect = true
