package replica

import (
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// A refresh from the relay discards a record's changes that the relay
// lacks, but they may live on elsewhere: another device imported them, or
// another relay holds them, and they come back to this device with that
// device's or relay's changes. Automerge numbers an actor's changes per
// document, 1, 2, 3, and refuses a second, different change with a number
// it holds; after discarding, this device's actor would number its next
// changes to the record as the discarded ones were, and every holder of
// those would refuse them, and this device every change built on them. So
// a refresh that discards changes gives the replica a fresh actor before
// the record is written again (newActor): its later changes can never
// clash with the discarded ones, which merge as any other device's would
// if they return. Documents already loaded keep their actor, which is
// safe: only the refreshed records lost changes.

// A refresh discards what the relay lacks as of the moment it starts
// (since, the store's read timestamp then: every write committed before
// has a version at or below it, every later one above). The app may write
// while the refresh runs, and those writes were acknowledged to it: a
// record whose document was written after since is merged with the
// relay's snapshot instead of replaced, and is never purged; it stays
// pending, and its changes, the earlier ones it builds on included, are
// pushed by the next sync.

// replaceSince is replaceOp for a refresh that started at since: a record
// written after it is merged instead.
func (r *Replica) replaceSince(since uint64) remoteOp {
	return func(txn *badger.Txn, t *touched, rec remoteRec, res *batchResult) (bool, error) {
		later, err := writtenSince(txn, t.coll, t.id, since)
		if err != nil {
			return false, err
		}
		if later {
			return r.mergeOp(txn, t, rec, res)
		}
		return r.replaceOp(txn, t, rec, res)
	}
}

// readTs returns the store's read timestamp now.
func (r *Replica) readTs() (uint64, error) {
	var ts uint64
	err := r.view(func(txn *badger.Txn) error {
		ts = txn.ReadTs()
		return nil
	})
	return ts, err
}

// writtenSince reports whether the record's document was written (its
// meta key set) after the store's read timestamp since.
func writtenSince(txn *badger.Txn, coll, id string, since uint64) (bool, error) {
	item, err := txn.Get(recKey('r', coll, id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return item.Version() > since, nil
}

// replaceOp makes a record exactly the relay's snapshot, discarding local
// changes (refresh from the relay).
func (r *Replica) replaceOp(txn *badger.Txn, t *touched, rec remoteRec, _ *batchResult) (bool, error) {
	d, err := crdt.Load(rec.data, "")
	if err != nil {
		return false, err
	}
	if h := t.doc.Heads(); t.existed && len(h) > 0 && !holdsAll(d, h) {
		r.newActor()
	}
	if err := d.SetActor(r.actorID()); err != nil {
		d.Free()
		return false, err
	}
	if err := r.deleteRecordKeys(txn, t.coll, t.id, t.new); err != nil {
		d.Free()
		return false, err
	}
	t.doc, t.new = d, meta{nextChunk: t.new.nextChunk}
	return true, r.storeSynced(txn, t, rec.relay, nil)
}

// purgeRecord removes every trace of a record the relay does not have
// (refresh from the relay that started at since), unless the record was
// written after since: then it is kept, and kept reports so.
func (r *Replica) purgeRecord(coll, id string, since uint64) (out applied, kept bool, err error) {
	t, err := r.recordOp(coll, id, func(txn *badger.Txn, t *touched) (bool, error) {
		if kept, err = writtenSince(txn, coll, id, since); err != nil || kept {
			return false, err
		}
		if t.existed {
			r.newActor() // its changes are discarded: see above
		}
		return false, r.deleteRecordKeys(txn, coll, id, t.new)
	})
	if err != nil {
		return out, false, fmt.Errorf("ferry: purging %s/%s: %w", coll, id, err)
	}
	if !kept && t.existed && !t.wasDeleted {
		out.ev = Event{Collection: coll, ID: id, Kind: Deleted, Origin: Remote}
		out.changed = true
		r.feeds.publish([]Event{out.ev})
	}
	return out, kept, nil
}

// forceOp makes the relay's copy of a record equal this device's (refresh
// from the device): the relay's snapshot is merged in, then every field set
// back to the device's values, as a change that follows both. A record the
// device does not have is deleted.
func (r *Replica) forceOp(txn *badger.Txn, t *touched, rec remoteRec, _ *batchResult) (bool, error) {
	d := t.doc
	var mine map[string]any
	if t.existed {
		// Kinds kept: a field the relay's version lacks comes back as the
		// collaborative text or counter it was here.
		var err error
		if mine, err = d.TypedFields(); err != nil {
			return false, err
		}
	}
	if _, err := d.Import(rec.data); err != nil {
		return false, err
	}
	if !t.existed || t.wasDeleted {
		if err := d.SetDeleted(true); err != nil {
			return false, err
		}
	} else {
		if err := replaceFields(d, mine); err != nil {
			return false, err
		}
		if err := d.SetDeleted(false); err != nil {
			return false, err
		}
	}
	if _, err := d.Commit("ferry: refresh from client", r.opts.Clock()); err != nil {
		return false, err
	}
	return true, r.storeSynced(txn, t, rec.relay, nil)
}
