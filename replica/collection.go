package replica

import (
	"errors"
	"fmt"

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
//
// Like every write, it returns once the edit is durable. A live profile
// pushing the collection sends the edit to the relay while its fsync runs,
// so if that fsync fails, the error comes back for an edit the relay may
// hold: the edit is committed to the store, not known to be durable, and
// stays pending until the relay acknowledges it.
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
	key := cacheKey(c.name, id)
	err = c.readLocked(id, c.r.locks.rlock(key), false, fn)
	if errors.Is(err, errDeferredDoc) {
		// Building changes the document, which readers under the read
		// lock share: it is built under the record's write lock.
		err = c.readLocked(id, c.r.locks.lockAll([]string{key}), true, fn)
	}
	return err
}

// errDeferredDoc says a record's cached document was left deferred by a
// pull and must be built before it is read whole (see read).
var errDeferredDoc = errors.New("replica: document not built yet")

// readLocked is read under the lock unlock lets go of, the write lock if
// write. Under the write lock it builds a deferred document; under the
// read lock it leaves it to the caller (errDeferredDoc).
func (c *Collection) readLocked(id string, unlock func(), write bool, fn func(d *crdt.Doc, m meta) error) error {
	defer unlock()
	return c.r.db.View(func(txn *badger.Txn) error {
		d, m, ok, err := c.r.loadDoc(txn, c.name, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s/%s", ErrNotFound, c.name, id)
		}
		if d.Deferred() {
			if !write {
				return errDeferredDoc
			}
			if err := build(c.name, id, d); err != nil {
				return err
			}
		}
		return fn(d, m)
	})
}

// Watch subscribes to the collection's events from now on, buffering up
// to buffer of them (0: 256). Close the feed when done. To also have what
// changed since an earlier read, use WatchFrom.
func (c *Collection) Watch(buffer int) *Feed { return c.r.feeds.add(c.name, buffer, nil) }

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
