// Package badgerstore is the relay's embedded relay.Store: one Badger
// database in a data folder, holding every tenant, each record as a
// snapshot plus the changes after it, every commit fsynced (unless
// Options.Relaxed).
// It owns the folder's format (checked, migrated, refused when foreign,
// newer or damaged), compaction and truncation, and backups (Backup,
// BackupDir, Restore). It passes relay/storetest.
//
//	store, err := badgerstore.Open(dir, nil)
//	srv, err := relay.NewServer(&relay.Options{Store: store, Auth: auth})
//	...
//	srv.Close()
//	store.Close()
package badgerstore
