package replica

import (
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// A record is pending while it holds changes the relay lacks (its p/ key);
// a/ holds the heads the relay last acknowledged, and l/ marks a conflict
// resolution only a leased sync may push (see keys.go). This file is the
// one place that reads what a pending record has to push and records what
// the relay then holds.

// outgoing is one record's changes in a push.
type outgoing struct {
	id      string
	changes []byte
	heads   crdt.Heads // the record's heads once changes are applied
	base    crdt.Heads // the heads changes were taken since (nil: all of them)
	known   bool       // the relay held some of the record before
	deleted bool
	// partial marks a piece of a record's changes other than the last
	// (see pieces): acknowledged, but not counted as a record pushed.
	partial bool
	// early marks an early push's (see liveearly.go): base is the heads
	// the relay held as the edit committed, and the acknowledgement is
	// recorded only if the relay's heads recorded are still those, or
	// prev, the heads of an earlier early push of the record from this
	// device, which this one's build on.
	early bool
	prev  crdt.Heads
}

// outgoing reads what a pending record has to push.
func (r *Replica) outgoing(coll, id string) (outgoing, error) {
	if o, ok, err := r.outgoingStored(coll, id); ok || err != nil {
		return o, err
	}
	o := outgoing{id: id}
	c := &Collection{r: r, name: coll}
	err := c.read(id, func(d *crdt.Doc, m meta) error {
		var acked crdt.Heads
		if err := r.db.View(func(txn *badger.Txn) (err error) {
			acked, err = readAcked(txn, coll, id)
			return err
		}); err != nil {
			return err
		}
		changes, err := d.ChangesSince(acked)
		o.base = acked
		if errors.Is(err, crdt.ErrUnknownHeads) {
			changes, err = d.ChangesSince(nil)
			o.base = nil
		}
		o.changes, o.heads, o.known, o.deleted = changes, m.heads, len(acked) > 0, m.deleted
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return o, nil // pending marker of a record purged meanwhile
	}
	return o, err
}

// outgoingStored reads what a record the relay has never acknowledged has
// to push straight from its stored chunks, without loading its document,
// when it has no snapshot: its chunks are then every change it holds, in
// the order they were written, which is an order they apply in. A bulk
// push of new records (a first sync after creating them offline) so costs
// a read of their bytes instead of an Automerge load and its checks of
// each. The bytes are checked as far as a push needs: the sizes its
// bookkeeping records, every chunk whole and checksummed, and the
// changes' heads those of its meta (a damaged record so reads as one);
// the relay checks every change again. ok is false when the record does
// not qualify, or its bytes fail a check, and then outgoing loads it as
// before (which reports a damaged record).
func (r *Replica) outgoingStored(coll, id string) (o outgoing, ok bool, err error) {
	release, err := r.enter()
	if err != nil {
		return o, false, err
	}
	defer release()
	key := cacheKey(coll, id)
	defer r.locks.rlock(key)()
	if r.cache.has(key) {
		return o, false, nil // in memory already: reading it there is cheaper
	}
	err = r.db.View(func(txn *badger.Txn) error {
		m, found, err := readMeta(txn, coll, id)
		if err != nil || !found || m.snapBytes != 0 || m.chunks == 0 {
			return err
		}
		acked, err := readAcked(txn, coll, id)
		if err != nil || len(acked) > 0 {
			return err
		}
		buf, chunks, err := appendChunks(txn, coll, id, make([]byte, 0, m.chunkBytes))
		if err != nil {
			return err
		}
		if len(buf) != m.chunkBytes || chunks != m.chunks {
			return nil
		}
		infos, err := crdt.ParseChanges(buf)
		if err != nil || !leadsTo(nil, infos, m.heads) {
			return nil
		}
		o = outgoing{id: id, changes: buf, heads: m.heads, deleted: m.deleted}
		ok = true
		return nil
	})
	return o, ok, err
}

// acknowledge records, in one transaction, that the relay holds each
// record up to the heads pushed; a record stays pending if it changed
// since. leased says the push held the lease, so any conflict resolution
// it carried is pushed as it must be.
//
// It reads each record's heads from its meta, never its document: loading
// thousands of documents inside one write transaction (each a Badger
// iterator, which sorts the transaction's pending writes) made an
// acknowledgement cost more than the push it acknowledged.
func (r *Replica) acknowledge(coll string, batch []outgoing, leased bool) error {
	_, err := r.acknowledgeEarly(coll, batch, leased)
	return err
}

// ackFault, set by tests, makes recording acknowledgements fail as a
// store error would.
var ackFault func() error

// acknowledgeEarly is acknowledge, and returns the IDs of the records of
// early pushes in batch whose acknowledgement it did not record, as the
// relay's heads recorded for them had moved (see outgoing.early).
func (r *Replica) acknowledgeEarly(coll string, batch []outgoing, leased bool) (skipped []string, err error) {
	if ackFault != nil {
		if err := ackFault(); err != nil {
			return nil, err
		}
	}
	release, err := r.enter()
	if err != nil {
		return nil, err
	}
	defer release()
	keys := make([]string, len(batch))
	for i, o := range batch {
		keys[i] = cacheKey(coll, o.id)
	}
	defer r.locks.lockAll(keys)()
	done := r.writing()
	defer done()
	return skipped, r.db.Update(func(txn *badger.Txn) error {
		skipped = skipped[:0]
		for _, o := range batch {
			m, ok, err := readMeta(txn, coll, o.id)
			if err != nil {
				return err
			}
			if !ok {
				continue // gone since the push (purged): nothing to acknowledge
			}
			if o.early {
				held, err := readAcked(txn, coll, o.id)
				if err != nil {
					return err
				}
				if !held.Equal(o.base) && (o.prev == nil || !held.Equal(o.prev)) {
					// Acknowledged or applied since the edit: these heads
					// may be older than what is recorded. The record stays
					// pending if it was, and is pushed the ordinary way.
					skipped = append(skipped, o.id)
					continue
				}
			}
			if err := ackRecord(txn, coll, o.id, m.heads, o.heads, leased); err != nil {
				return err
			}
		}
		return nil
	})
}

// ackRecord stores heads as what the relay holds of a record whose
// current heads are now, and clears its pending marker if it has nothing
// beyond them.
func ackRecord(txn *badger.Txn, coll, id string, now, heads crdt.Heads, leased bool) error {
	if err := txn.Set(recKey('a', coll, id), heads.Bytes()); err != nil {
		return err
	}
	if leased {
		if err := deleteIfPresent(txn, recKey('l', coll, id)); err != nil {
			return err
		}
	}
	// The heads pushed are the document's as it was then: if it still
	// has them, nothing is left to push.
	if now.Equal(heads) {
		return clearPending(txn, coll, id)
	}
	return nil
}

// storeArrived stores a record new to this device as the bytes it arrived
// in (they load as it is), already synced at relay. pv, if not nil, may
// be its read model (see preparedView).
func (r *Replica) storeArrived(txn *badger.Txn, t *touched, data []byte, relay crdt.Heads, pv *preparedView) error {
	if len(data) > r.opts.MaxRecordBytes {
		return fmt.Errorf("%w: %s/%s is %d bytes, limit %d", ErrTooLarge, t.coll, t.id, len(data), r.opts.MaxRecordBytes)
	}
	nm := meta{heads: relay, deleted: pv.deletedOf(t.doc, relay), snapBytes: len(data), nextChunk: t.new.nextChunk}
	for _, kv := range []struct {
		k, v []byte
	}{
		{recKey('s', t.coll, t.id), data},
		{recKey('r', t.coll, t.id), nm.encode()},
		{recKey('a', t.coll, t.id), relay.Bytes()},
	} {
		if err := txn.Set(kv.k, kv.v); err != nil {
			return err
		}
	}
	t.new = nm
	return r.putView(txn, t.coll, t.id, t.doc, nm, pv)
}

// storeSynced writes the record's new changes, records relay as the heads
// the relay holds, and sets the pending marker to whether the record has
// changes beyond them. pv, if not nil, may be its read model (see
// preparedView).
func (r *Replica) storeSynced(txn *badger.Txn, t *touched, relay crdt.Heads, pv *preparedView) error {
	nm, err := r.writeRecord(txn, t.coll, t.id, t.doc, t.new, false, pv)
	if err != nil {
		return err
	}
	t.new = nm
	if err := txn.Set(recKey('a', t.coll, t.id), relay.Bytes()); err != nil {
		return err
	}
	// The document holds every change of the relay's heads (they were
	// just imported), so other heads mean changes the relay lacks.
	if !nm.heads.Equal(relay) {
		return txn.Set(recKey('p', t.coll, t.id), nil)
	}
	return clearPending(txn, t.coll, t.id)
}

// clearPending marks a record as holding nothing the relay lacks. A key is
// deleted only if it is there: a delete writes a version, and versions of
// a key that flips on every edit and acknowledgement would pile up for
// every scan of its prefix to step over until Badger compacts them.
func clearPending(txn *badger.Txn, coll, id string) error {
	for _, prefix := range []byte{'p', 'l'} {
		if err := deleteIfPresent(txn, recKey(prefix, coll, id)); err != nil {
			return err
		}
	}
	return nil
}

// markUnsynced records, in one transaction, that the relay holds nothing
// of these records, so all their changes are pushed (slow sync, refresh
// from the device, a first sync). Only keys are touched: no document is
// loaded, and a record already pending with nothing recorded as synced
// (every record on a first sync) costs one read.
func (r *Replica) markUnsynced(coll string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	release, err := r.enter()
	if err != nil {
		return err
	}
	defer release()
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = cacheKey(coll, id)
	}
	defer r.locks.lockAll(keys)()
	return r.db.Update(func(txn *badger.Txn) error {
		for _, id := range ids {
			if _, synced, err := getKey(txn, recKey('a', coll, id)); err != nil {
				return err
			} else if synced {
				if err := txn.Delete(recKey('a', coll, id)); err != nil {
					return err
				}
			}
			if _, pending, err := getKey(txn, recKey('p', coll, id)); err != nil {
				return err
			} else if !pending {
				if err := txn.Set(recKey('p', coll, id), nil); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// pendingAmong returns the records among ids that are pending, each once,
// in the order given; with ids nil, every pending record, in ID order.
func (r *Replica) pendingAmong(coll string, ids []string) ([]string, error) {
	if ids == nil {
		return (&Collection{r: r, name: coll}).Pending()
	}
	var out []string
	seen := map[string]bool{}
	err := r.view(func(txn *badger.Txn) error {
		for _, id := range ids {
			if seen[id] {
				continue
			}
			seen[id] = true
			_, pending, err := getKey(txn, recKey('p', coll, id))
			if err != nil {
				return err
			}
			if pending {
				out = append(out, id)
			}
		}
		return nil
	})
	return out, err
}
