package replica

import (
	"bytes"
	"errors"
	"fmt"
	"iter"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// Collection is a named set of records (an app's table or data type). It
// is a handle: cheap to create, safe for concurrent use. Each write method is
// a unit of work of its own; use [Replica.Write] to group several.
type Collection struct {
	r    *Replica
	name string
	err  error // the name is not allowed: every method returns it
}

// Collection returns a handle on the named collection. It exists once a
// record is written to it. A name that is not allowed (see
// ValidateCollection) gives a handle whose every method fails with
// ErrInvalidName.
func (r *Replica) Collection(name string) *Collection {
	return &Collection{r: r, name: name, err: ValidateCollection(name)}
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
	err := c.r.Write(func(tx *Tx) error {
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
	if c.err != nil {
		return c.err
	}
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
	After   string // only IDs after this one (to resume a scan)
	Limit   int    // at most this many; 0 means no limit
	Deleted bool   // include tombstones
}

// scanPage is how many records a scan lists per store transaction.
const scanPage = 256

// Scan returns the records in ID order (Insert's UUIDv7 IDs sort in
// creation order), as an iterator: records are listed a page at a time and
// read as the loop reaches them, so a collection of any size is scanned in
// bounded memory, and stopping the loop stops the scan.
//
//	for rec, err := range products.Scan(replica.ScanOptions{}) {
//		if err != nil { ... }
//		var p Product
//		rec.Decode(&p)
//	}
//
// Each record is read at its latest version: one deleted after the scan
// listed it is left out (unless ScanOptions.Deleted). An error ends the
// iteration after it is yielded.
func (c *Collection) Scan(o ScanOptions) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		if c.err != nil {
			yield(Record{}, c.err)
			return
		}
		n := 0
		after := o.After
		for {
			page := scanPage
			if o.Limit > 0 {
				page = min(page, o.Limit-n)
			}
			ids, err := c.listIDs(o.Prefix, after, page, o.Deleted)
			if err != nil {
				yield(Record{}, err)
				return
			}
			for _, id := range ids {
				rec, ok, err := c.record(id, o.Deleted)
				if err != nil {
					yield(Record{}, err)
					return
				}
				if !ok {
					continue
				}
				if !yield(rec, nil) {
					return
				}
				if n++; o.Limit > 0 && n == o.Limit {
					return
				}
			}
			if len(ids) < page {
				return
			}
			after = ids[len(ids)-1]
		}
	}
}

// listIDs lists up to limit record IDs with prefix, after the ID after.
func (c *Collection) listIDs(idPrefix, after string, limit int, deleted bool) ([]string, error) {
	var ids []string
	err := c.r.view(func(txn *badger.Txn) error {
		prefix := collPrefix('r', c.name)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: append(bytes.Clone(prefix), idPrefix...), PrefetchValues: true})
		defer it.Close()
		// Start at the prefix, or just past After if that comes later: a
		// seek to After alone could land before the prefix and end the scan.
		start := append(bytes.Clone(prefix), idPrefix...)
		if a := append(append(bytes.Clone(prefix), after...), 0); after != "" && bytes.Compare(a, start) > 0 {
			start = a
		}
		for it.Seek(start); it.Valid() && len(ids) < limit; it.Next() {
			var m meta
			err := it.Item().Value(func(v []byte) (err error) { m, err = decodeMeta(v); return })
			if err != nil {
				return err
			}
			if !m.deleted || deleted {
				ids = append(ids, string(it.Item().Key()[len(prefix):]))
			}
		}
		return nil
	})
	return ids, err
}

// record reads one record for a scan; ok is false if it is deleted (and
// tombstones are not wanted) or gone.
func (c *Collection) record(id string, deleted bool) (rec Record, ok bool, err error) {
	err = c.read(id, func(d *crdt.Doc, m meta) error {
		if m.deleted && !deleted {
			return nil
		}
		f, err := d.Fields()
		rec, ok = Record{ID: id, Deleted: m.deleted, Heads: m.heads, Fields: f}, true
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return Record{}, false, nil
	}
	return rec, ok, err
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
	if c.err != nil {
		return c.err
	}
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
