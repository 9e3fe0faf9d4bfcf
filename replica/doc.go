// Package replica is one device's copy of its data: records in collections,
// stored as Automerge documents in an embedded Badger store, with the
// bookkeeping that sync needs (pending changes, acknowledged heads) written
// in the same transaction as each edit.
//
// The caller's loop:
//
//	r, err := replica.Open(dir, nil) // durable by default
//	if err != nil { ... }
//	defer r.Close()
//
//	products := r.Collection("products")
//	id, err := products.Insert(Product{Name: "Tea", Qty: 3})
//	err = products.Update(id, func(d *crdt.Doc) error {
//		return d.Increment(crdt.Path{"stock"}, -1)
//	})
//	var p Product
//	err = products.Get(id, &p)
//
//	// Several writes that commit together or not at all:
//	err = r.Write(func(tx *replica.Tx) error {
//		tx.Delete("products", id)
//		_, err := tx.Insert("audit", map[string]any{"deleted": id})
//		return err
//	})
//
//	feed := products.Watch(0) // events as they commit
//	for ev := range feed.C { ... }
//
// Every write is one Badger transaction that holds the record's new
// Automerge changes, its metadata, its read model (its current fields,
// which Get and Scan read without loading the document) and its pending
// marker, fsynced before the
// call returns unless Options.Relaxed is set. Changes applied from the relay
// are not fsynced on their own: a sync fetches again what a crash loses. A record is stored as a
// snapshot plus incremental chunks, folded into the snapshot once
// Options.CompactAfter chunks pile up. Loaded documents are cached, up to
// Options.CacheBytes of their estimated memory.
//
// Deletes are tombstones (see crdt.TombstoneKey): a deleted record keeps
// its history, so a delete that races an edit on another device is a
// conflict the sync policy resolves, not a silent loss.
package replica
