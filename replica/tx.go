package replica

import (
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/google/uuid"

	"github.com/ferrysync/ferry/crdt"
)

// Tx is a unit of work: the writes queued on it commit together, in one
// store transaction, or not at all. A Tx is only valid inside the function
// given to [Replica.Write] and must not be shared between goroutines.
//
// The queued writes run, in order, when that function returns nil. Their
// errors (ErrNotFound, ErrExists, an update function's error) abort the
// whole unit.
type Tx struct {
	r   *Replica
	ops []op
	err error // the first error a queueing call returned
}

type opKind int

const (
	opCreate opKind = iota // new record; ErrExists if live
	opPut                  // create or overwrite fields
	opUpdate               // edit an existing live record
	opDelete               // tombstone
	opImport               // remote changes (sync)
)

type op struct {
	kind     opKind
	coll, id string
	value    any
	fn       func(*crdt.Doc) error
	data     []byte
}

// Write runs fn and commits the writes it queued on tx atomically, across
// records and collections. If fn returns an error nothing is written and
// that error is returned. (Collection.Update edits one record.)
func (r *Replica) Write(fn func(tx *Tx) error) error {
	tx := &Tx{r: r}
	if err := fn(tx); err != nil {
		return err
	}
	if tx.err != nil {
		return tx.err
	}
	_, err := r.commit(tx.ops, true)
	return err
}

func (tx *Tx) queue(o op) error {
	err := ValidateCollection(o.coll)
	if err == nil {
		err = ValidateID(o.id)
	}
	if err != nil {
		if tx.err == nil {
			tx.err = err
		}
		return err
	}
	tx.ops = append(tx.ops, o)
	return nil
}

// Insert queues a new record holding v's fields under a new UUIDv7 ID
// (time-ordered, so scans list records in creation order) and returns the ID.
func (tx *Tx) Insert(coll string, v any) (string, error) {
	u, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("ferry: new record ID: %w", err)
	}
	id := u.String()
	return id, tx.queue(op{kind: opCreate, coll: coll, id: id, value: v})
}

// Create queues a new record with the app's ID. The commit fails with
// ErrExists if a live record has that ID.
func (tx *Tx) Create(coll, id string, v any) error {
	return tx.queue(op{kind: opCreate, coll: coll, id: id, value: v})
}

// Put queues a write of v's fields (see crdt.Doc.Put) to the record,
// creating it, or restoring it if deleted.
func (tx *Tx) Put(coll, id string, v any) error {
	return tx.queue(op{kind: opPut, coll: coll, id: id, value: v})
}

// Update queues fn to edit the record's document. The commit fails with
// ErrNotFound if the record does not exist or is deleted. fn runs during
// the commit, with the record locked: it must not call the replica.
func (tx *Tx) Update(coll, id string, fn func(doc *crdt.Doc) error) error {
	return tx.queue(op{kind: opUpdate, coll: coll, id: id, fn: fn})
}

// Delete queues the record's deletion: it becomes a tombstone, which syncs
// like any edit. Deleting a deleted record does nothing; a record that never
// existed gives ErrNotFound.
func (tx *Tx) Delete(coll, id string) error {
	return tx.queue(op{kind: opDelete, coll: coll, id: id})
}

// touched is one record's state during a commit.
type touched struct {
	coll, id   string
	doc        *crdt.Doc
	old, new   meta
	existed    bool // stored before this commit
	wasDeleted bool
	seen       bool  // existed, or created earlier in this unit of work
	live       bool  // exists and is not deleted, as of the ops applied so far
	dirty      bool  // the document held changes that were not stored
	corrupt    error // the stored record is damaged (ErrCorrupt): left alone
}

// commit applies ops under the records' locks in one Badger transaction.
// local marks the records pending (their changes are this device's, to be
// pushed); remote imports do not.
func (r *Replica) commit(ops []op, local bool) ([]Event, error) {
	if len(ops) == 0 {
		return nil, nil
	}
	written := 0
	defer func() { r.mem.wrote(written) }() // last, with every lock released
	release, err := r.enter()
	if err != nil {
		return nil, err
	}
	defer release()

	keys := make([]string, len(ops))
	for i, o := range ops {
		keys[i] = cacheKey(o.coll, o.id)
	}
	unlock := r.locks.lockAll(keys)
	defer unlock()

	state := map[string]*touched{}
	var order []*touched
	var early []earlyEdit
	done := r.writing()
	err = r.db.Update(func(txn *badger.Txn) error {
		early = early[:0]
		for i, o := range ops {
			t := state[keys[i]]
			if t == nil {
				var err error
				if t, err = r.touch(txn, o.coll, o.id); err != nil {
					return err
				}
				state[keys[i]] = t
				order = append(order, t)
			}
			if err := applyOp(t, o); err != nil {
				return fmt.Errorf("ferry: %s/%s: %w", o.coll, o.id, err)
			}
		}
		now := r.opts.Clock()
		for _, t := range order {
			if err := r.commitTouched(txn, t, now, local); err != nil {
				return err
			}
		}
		if local {
			var err error
			early, err = r.earlyEdits(txn, order)
			return err
		}
		return nil
	})
	done()
	if err == nil && len(early) > 0 {
		// Committed, not yet durable: live sessions push the edits while
		// the fsync runs (see liveearly.go).
		r.early.send(early)
	}
	err = r.durable(err)
	if err != nil {
		// The cached documents may hold edits that were never stored:
		// drop them so the next read loads what the store has.
		for _, t := range order {
			r.discard(t.coll, t.id, t.doc)
		}
		if errors.Is(err, badger.ErrTxnTooBig) {
			return nil, fmt.Errorf("%w: unit of work too large for one transaction: %w", ErrTooLarge, err)
		}
		return nil, err
	}
	written = len(order)
	var events []Event
	for _, t := range order {
		r.settle(t)
		if ev, ok := t.event(local); ok {
			events = append(events, ev)
		}
	}
	// Published under the records' locks, so a feed sees one record's
	// events in commit order.
	r.feeds.publish(events)
	return events, nil
}

// touch loads a record for a unit of work: stored, or new.
func (r *Replica) touch(txn *badger.Txn, coll, id string) (*touched, error) {
	d, m, ok, err := r.loadDoc(txn, coll, id)
	if err != nil {
		return nil, err
	}
	if ok {
		err = build(coll, id, d)
	} else {
		d, err = crdt.New(r.actorID())
	}
	if err != nil {
		return nil, err
	}
	return &touched{coll: coll, id: id, doc: d, old: m, new: m, existed: ok, wasDeleted: ok && m.deleted, seen: ok, live: ok && !m.deleted}, nil
}

// commitTouched commits a record's edits as one change and writes it.
func (r *Replica) commitTouched(txn *badger.Txn, t *touched, now time.Time, local bool) error {
	made, err := t.doc.Commit("", now)
	if err != nil {
		return err
	}
	if !made && !t.existed && t.seen && len(t.doc.Heads()) == 0 {
		// Created with no fields: it must still exist. (A record imported
		// whole has the sender's heads already, and must keep exactly
		// those.)
		if err := t.doc.CommitEmpty("", now); err != nil {
			return err
		}
	}
	nm, err := r.writeRecord(txn, t.coll, t.id, t.doc, t.old, local, nil)
	if err != nil {
		return err
	}
	t.new = nm
	if !t.existed && len(nm.heads) > 0 {
		return txn.Set(collKey(t.coll), nil)
	}
	return nil
}

func applyOp(t *touched, o op) error {
	switch o.kind {
	case opCreate:
		if t.live {
			return ErrExists
		}
		fallthrough
	case opPut:
		if err := t.doc.SetDeleted(false); err != nil {
			return err
		}
		t.live, t.seen = true, true
		return t.doc.Put(o.value)
	case opUpdate:
		if !t.live {
			return ErrNotFound
		}
		return o.fn(t.doc)
	case opDelete:
		if !t.seen {
			return ErrNotFound
		}
		t.live = false
		return t.doc.SetDeleted(true)
	case opImport:
		if _, err := t.doc.Import(o.data); err != nil {
			return err
		}
		t.seen, t.live = true, !t.doc.Deleted()
		return nil
	}
	return fmt.Errorf("ferry: unknown op %d", o.kind)
}
