//go:build !linux

package replica

// fsyncLogsDirect: elsewhere, Badger's own DB.Sync fsyncs its active logs
// (see syncer.syncNow).
var fsyncLogsDirect = false
