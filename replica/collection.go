package replica

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// Collection is a named set of records (an app's table or data type). It
// is a handle: cheap to create, safe for concurrent use. Each write method is
// a unit of work of its own; use [Replica.Update] to group several.
type Collection struct {
	r    *Replica
	name string
}

// Collection returns a handle on the named collection. It exists once a
// record is written to it.
func (r *Replica) Collection(name string) (*Collection, error) {
	if err := ValidateCollection(name); err != nil {
		return nil, err
	}
	return &Collection{r: r, name: name}, nil
}

// Collections lists the collections that hold records, in name order.
func (r *Replica) Collections() ([]string, error) {
	release, err := r.enter()
	if err != nil {
		return nil, err
	}
	defer release()
	var out []string
	err = r.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("k/")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			out = append(out, string(it.Item().Key()[2:]))
		}
		return nil
	})
	return out, err
}

func collKey(coll string) []byte { return append([]byte("k/"), coll...) }

// Name returns the collection's name.
func (c *Collection) Name() string { return c.name }

func (c *Collection) one(o op) error {
	tx := &Tx{r: c.r}
	o.coll = c.name
	if err := tx.queue(o); err != nil {
		return err
	}
	_, err := c.r.commit(tx.ops, true)
	return err
}

// Insert stores a new record holding v's fields (a struct or a map) under a
// new UUIDv7 ID, and returns the ID.
func (c *Collection) Insert(v any) (string, error) {
	var id string
	err := c.r.Update(func(tx *Tx) error {
		var err error
		id, err = tx.Insert(c.name, v)
		return err
	})
	return id, err
}

// Create stores a new record with the app's ID; ErrExists if a live record
// has it.
func (c *Collection) Create(id string, v any) error {
	return c.one(op{kind: opCreate, id: id, value: v})
}

// Put writes v's fields to the record, creating or restoring it. Only the
// fields that differ become changes.
func (c *Collection) Put(id string, v any) error {
	return c.one(op{kind: opPut, id: id, value: v})
}

// Update edits the record's document with fn, which runs with the record
// locked and must not call the replica. ErrNotFound if the record does not
// exist or is deleted. If fn fails nothing is written.
func (c *Collection) Update(id string, fn func(doc *crdt.Doc) error) error {
	return c.one(op{kind: opUpdate, id: id, fn: fn})
}

// Delete turns the record into a tombstone.
func (c *Collection) Delete(id string) error {
	return c.one(op{kind: opDelete, id: id})
}

// read runs fn on the record's document under its read lock. fn must not
// keep the document.
func (c *Collection) read(id string, fn func(d *crdt.Doc, m meta) error) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	release, err := c.r.enter()
	if err != nil {
		return err
	}
	defer release()
	defer c.r.locks.rlock(cacheKey(c.name, id))()
	return c.r.db.View(func(txn *badger.Txn) error {
		d, m, ok, err := c.r.loadDoc(txn, c.name, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s/%s", ErrNotFound, c.name, id)
		}
		return fn(d, m)
	})
}

// Get decodes the record into out (a pointer to a struct or a map; see
// crdt.Doc.Decode). ErrNotFound if it does not exist or is deleted.
func (c *Collection) Get(id string, out any) error {
	return c.read(id, func(d *crdt.Doc, m meta) error {
		if m.deleted {
			return fmt.Errorf("%w: %s/%s is deleted", ErrNotFound, c.name, id)
		}
		return d.Decode(out)
	})
}

// Record is a record read by [Collection.Scan].
type Record struct {
	ID      string
	Deleted bool
	Heads   crdt.Heads
	Fields  map[string]any
}

// Decode converts the record's fields into out, as [Collection.Get] does.
func (r Record) Decode(out any) error { return crdt.DecodeValue(r.Fields, out) }

// ScanOptions select records for [Collection.Scan].
type ScanOptions struct {
	Prefix  string // only IDs with this prefix
	After   string // only IDs after this one (for paging)
	Limit   int    // at most this many; 0 means no limit
	Deleted bool   // include tombstones
}

// Scan returns records in ID order. Insert's UUIDv7 IDs sort in creation
// order.
func (c *Collection) Scan(o ScanOptions) ([]Record, error) {
	var ids []string
	var metas []meta
	release, err := c.r.enter()
	if err != nil {
		return nil, err
	}
	err = c.r.db.View(func(txn *badger.Txn) error {
		prefix := collPrefix('r', c.name)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: append(bytes.Clone(prefix), o.Prefix...), PrefetchValues: true})
		defer it.Close()
		// Start at the prefix, or just past After if that comes later: a
		// seek to After alone could land before the prefix and end the scan.
		start := append(bytes.Clone(prefix), o.Prefix...)
		if after := append(append(bytes.Clone(prefix), o.After...), 0); o.After != "" && bytes.Compare(after, start) > 0 {
			start = after
		}
		for it.Seek(start); it.Valid(); it.Next() {
			var m meta
			err := it.Item().Value(func(v []byte) (err error) { m, err = decodeMeta(v); return })
			if err != nil {
				return err
			}
			if m.deleted && !o.Deleted {
				continue
			}
			ids = append(ids, string(it.Item().Key()[len(prefix):]))
			metas = append(metas, m)
			if o.Limit > 0 && len(ids) == o.Limit {
				break
			}
		}
		return nil
	})
	release()
	if err != nil {
		return nil, err
	}
	out := make([]Record, 0, len(ids))
	for _, id := range ids {
		err := c.read(id, func(d *crdt.Doc, m meta) error {
			// Each record is read at its latest version, which may be newer
			// than the listing: one deleted since is left out.
			if m.deleted && !o.Deleted {
				return nil
			}
			f, err := d.Fields()
			out = append(out, Record{ID: id, Deleted: m.deleted, Heads: m.heads, Fields: f})
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Heads returns the record's current version. Deleted records have heads
// too.
func (c *Collection) Heads(id string) (crdt.Heads, error) {
	var h crdt.Heads
	err := c.read(id, func(_ *crdt.Doc, m meta) error { h = m.heads; return nil })
	return h, err
}

// Watch subscribes to the collection's events, buffering up to buffer of
// them (0: 256). Close the feed when done.
func (c *Collection) Watch(buffer int) *Feed { return c.r.feeds.add(c.name, buffer) }

// Pending lists the IDs of records with changes the relay has not
// acknowledged, in ID order.
func (c *Collection) Pending() ([]string, error) {
	var ids []string
	err := c.pendingScan(func(id string) { ids = append(ids, id) })
	return ids, err
}

// PendingCount counts the records with unacknowledged changes.
func (c *Collection) PendingCount() (int, error) {
	n := 0
	err := c.pendingScan(func(string) { n++ })
	return n, err
}

func (c *Collection) pendingScan(fn func(id string)) error {
	release, err := c.r.enter()
	if err != nil {
		return err
	}
	defer release()
	return c.r.db.View(func(txn *badger.Txn) error {
		prefix := collPrefix('p', c.name)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			fn(string(it.Item().Key()[len(prefix):]))
		}
		return nil
	})
}

func readAcked(txn *badger.Txn, coll, id string) (crdt.Heads, error) {
	item, err := txn.Get(recKey('a', coll, id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var h crdt.Heads
	err = item.Value(func(v []byte) (err error) { h, err = crdt.HeadsFromBytes(v); return })
	return h, err
}

// Import merges Automerge data into the record, creating it if needed:
// another replica's Export, any Automerge library's saved document
// (JavaScript's included), or changes. Changes already held are ignored,
// and a record new to the replica gets exactly the sender's heads. What
// is imported is not pending: it came from elsewhere, and is not pushed
// back. Corrupt bytes or missing dependencies give an error wrapping
// crdt.ErrCorrupt or crdt.ErrMissingDeps, and nothing is written.
func (c *Collection) Import(id string, changes []byte) error {
	tx := &Tx{r: c.r}
	if err := tx.queue(op{kind: opImport, coll: c.name, id: id, data: changes}); err != nil {
		return err
	}
	_, err := c.r.commit(tx.ops, false)
	return err
}
