package replica

import (
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// replaceOp makes a record exactly the relay's snapshot, discarding local
// changes (refresh from the relay).
func (r *Replica) replaceOp(txn *badger.Txn, t *touched, rec remoteRec, _ *batchResult) (bool, error) {
	d, err := crdt.Load(rec.data, r.actor)
	if err != nil {
		return false, err
	}
	if err := r.deleteRecordKeys(txn, t.coll, t.id, t.new); err != nil {
		return false, err
	}
	t.doc, t.new = d, meta{nextChunk: t.new.nextChunk}
	return true, r.storeSynced(txn, t, rec.relay)
}

// purgeRecord removes every trace of a record the relay does not have
// (refresh from the relay).
func (r *Replica) purgeRecord(coll, id string) (applied, error) {
	var out applied
	t, err := r.recordOp(coll, id, func(txn *badger.Txn, t *touched) (bool, error) {
		return false, r.deleteRecordKeys(txn, coll, id, t.new)
	})
	if err != nil {
		return out, fmt.Errorf("ferry: purging %s/%s: %w", coll, id, err)
	}
	if t.existed && !t.wasDeleted {
		out.ev = Event{Collection: coll, ID: id, Kind: Deleted, Origin: Remote}
		out.changed = true
		r.feeds.publish([]Event{out.ev})
	}
	return out, nil
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
	return true, r.storeSynced(txn, t, rec.relay)
}
