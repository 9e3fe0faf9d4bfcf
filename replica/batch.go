package replica

import (
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// applied is what a sync did to one record, for its statistics.
type applied struct {
	ev      Event
	changed bool
}

// recordOp runs fn on one record's document in one store transaction; see
// batchOp.
func (r *Replica) recordOp(coll, id string, fn func(txn *badger.Txn, t *touched) (keep bool, err error)) (*touched, error) {
	ts, err := r.batchOp(coll, []string{id}, func(_ int, txn *badger.Txn, t *touched) (bool, error) { return fn(txn, t) })
	if len(ts) == 0 {
		return nil, err
	}
	return ts[0], err
}

// batchOp runs fn on the documents of records ids[0], ids[1], ... (an ID
// may repeat) in ONE store transaction, under the records' write locks.
// Then it caches each document and publishes its event. If fn returns
// keep=false the document's new changes are not stored (fn may still have
// written other keys); the record is reloaded from the transaction's view
// if it comes again, and dropped from the cache.
//
// Its callers apply what the relay sent or acknowledged, which the relay
// can send again: the transaction is not fsynced (see durable.go).
func (r *Replica) batchOp(coll string, ids []string, fn func(i int, txn *badger.Txn, t *touched) (keep bool, err error)) ([]*touched, error) {
	return r.batchOpThen(coll, ids, fn, nil)
}

// batchOpThen is batchOp, with then (if not nil) run last in the same
// transaction, for writes that must commit with the records or not at all.
func (r *Replica) batchOpThen(coll string, ids []string, fn func(i int, txn *badger.Txn, t *touched) (keep bool, err error), then func(txn *badger.Txn) error) ([]*touched, error) {
	release, err := r.enter()
	if err != nil {
		return nil, err
	}
	defer release()
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = cacheKey(coll, id)
	}
	defer r.locks.lockAll(keys)()
	byID := map[string]*touched{}
	var order []*touched
	var aside []*crdt.Doc // documents fn chose not to store
	err = r.db.Update(func(txn *badger.Txn) error {
		for i, id := range ids {
			t := byID[id]
			if t != nil && t.corrupt != nil {
				continue
			}
			if t == nil || t.doc == nil {
				d, m, ok, err := r.loadDocTxn(txn, coll, id, t == nil)
				if errors.Is(err, ErrCorrupt) && t == nil {
					// A damaged record fails alone: the rest of the batch
					// goes on, and the caller reports it.
					t = &touched{coll: coll, id: id, corrupt: err}
					byID[id] = t
					order = append(order, t)
					continue
				}
				if err != nil {
					return err
				}
				if !ok {
					if d, err = crdt.New(r.actor); err != nil {
						return err
					}
				}
				if t == nil {
					t = &touched{coll: coll, id: id, old: m, new: m, existed: ok, wasDeleted: ok && m.deleted, seen: ok, live: ok && !m.deleted}
					byID[id] = t
					order = append(order, t)
				}
				t.doc, t.new = d, m
			}
			keep, err := fn(i, txn, t)
			if err != nil {
				return err
			}
			if !keep {
				aside = append(aside, t.doc)
				t.doc, t.dirty = nil, true
			}
			if keep && !t.existed && len(t.new.heads) > 0 {
				if err := txn.Set(collKey(coll), nil); err != nil {
					return err
				}
			}
		}
		if then != nil {
			return then(txn)
		}
		return nil
	})
	// The records are still locked: documents not cached now are used by
	// no one and can be freed.
	freeAside := func() {
		for _, d := range aside {
			d.Free()
		}
	}
	if err != nil {
		for _, t := range order {
			r.discard(coll, t.id, t.doc)
		}
		freeAside()
		return order, err
	}
	var events []Event
	for _, t := range order {
		if t.doc == nil || t.dirty {
			r.discard(coll, t.id, t.doc)
		} else {
			r.cache.put(cacheKey(coll, t.id), t.doc, t.new)
		}
		if ev, ok := t.event(false); ok {
			events = append(events, ev)
		}
	}
	freeAside()
	r.feeds.publish(events)
	return order, nil
}

// loadDocTxn loads a record within txn; with cached=false it bypasses the
// cache (whose copy may hold changes this transaction did not store).
func (r *Replica) loadDocTxn(txn *badger.Txn, coll, id string, cached bool) (*crdt.Doc, meta, bool, error) {
	if !cached {
		r.cache.drop(cacheKey(coll, id))
	}
	return r.loadDoc(txn, coll, id)
}

// remoteRec is one record's changes (or snapshot) from the relay, with the
// heads the relay holds once they are applied.
type remoteRec struct {
	id    string
	data  []byte
	relay crdt.Heads
}

// remoteOp applies one remoteRec to a record inside a batch. It reports
// whether to store the document, and fills in what res sums up.
type remoteOp func(txn *badger.Txn, t *touched, rec remoteRec, res *batchResult) (keep bool, err error)

// batchResult sums up a batch: the records it changed (one event each),
// conflicts resolved, records that failed, and records whose conflicts
// wait for the policy (see merge.go).
type batchResult struct {
	events     []Event
	conflicts  int
	failed     []FailedRecord
	conflicted []conflicted
}

func (b *batchResult) add(o batchResult) {
	b.events = append(b.events, o.events...)
	b.conflicts += o.conflicts
	b.failed = append(b.failed, o.failed...)
	b.conflicted = append(b.conflicted, o.conflicted...)
}

// applyBatch runs op over recs in one store transaction (see batchOp).
func (r *Replica) applyBatch(coll string, recs []remoteRec, op remoteOp) (batchResult, error) {
	return r.applyBatchThen(coll, recs, op, nil)
}

// applyBatchThen is applyBatch, with then (if not nil) run last in the
// same transaction, given what the batch did so far.
func (r *Replica) applyBatchThen(coll string, recs []remoteRec, op remoteOp, then func(txn *badger.Txn, res *batchResult) error) (batchResult, error) {
	var res batchResult
	ids := make([]string, len(recs))
	for i, rec := range recs {
		ids[i] = rec.id
	}
	var last func(txn *badger.Txn) error
	if then != nil {
		last = func(txn *badger.Txn) error { return then(txn, &res) }
	}
	err := r.batchIntoThen(&res, coll, ids, func(i int, txn *badger.Txn, t *touched) (bool, error) {
		return op(txn, t, recs[i], &res)
	}, last)
	return res, err
}

// batchInto runs batchOp and adds the events of the records it changed to
// res.
func (r *Replica) batchInto(res *batchResult, coll string, ids []string, fn func(i int, txn *badger.Txn, t *touched) (bool, error)) error {
	return r.batchIntoThen(res, coll, ids, fn, nil)
}

func (r *Replica) batchIntoThen(res *batchResult, coll string, ids []string, fn func(i int, txn *badger.Txn, t *touched) (bool, error), then func(txn *badger.Txn) error) error {
	ts, err := r.batchOpThen(coll, ids, fn, then)
	if err != nil {
		return fmt.Errorf("ferry: applying %s from the relay: %w", coll, err)
	}
	for _, t := range ts {
		if t.corrupt != nil {
			res.failed = append(res.failed, failedRecord(t.id, t.corrupt))
			continue
		}
		if ev, ok := t.event(false); ok {
			res.events = append(res.events, ev)
		}
	}
	return nil
}

// storeArrived stores a record new to this device as the bytes it arrived
// in (they load as it is), already synced at relay.
func (r *Replica) storeArrived(txn *badger.Txn, t *touched, data []byte, relay crdt.Heads) error {
	if len(data) > r.opts.MaxRecordBytes {
		return fmt.Errorf("%w: %s/%s is %d bytes, limit %d", ErrTooLarge, t.coll, t.id, len(data), r.opts.MaxRecordBytes)
	}
	nm := meta{heads: relay, deleted: t.doc.Deleted(), snapBytes: len(data), nextChunk: t.new.nextChunk}
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
	return nil
}

// storeSynced writes the record's new changes, records relay as the heads
// the relay holds, and sets the pending marker to whether the record has
// changes beyond them.
func (r *Replica) storeSynced(txn *badger.Txn, t *touched, relay crdt.Heads) error {
	nm, err := r.writeRecord(txn, t.coll, t.id, t.doc, t.new, false)
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

func deleteIfPresent(txn *badger.Txn, key []byte) error {
	_, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return txn.Delete(key)
}

// recordIDs lists every stored record of a collection, tombstones
// included.
func (r *Replica) recordIDs(coll string) ([]string, error) {
	release, err := r.enter()
	if err != nil {
		return nil, err
	}
	defer release()
	var ids []string
	err = r.db.View(func(txn *badger.Txn) error {
		prefix := collPrefix('r', coll)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			ids = append(ids, string(it.Item().Key()[len(prefix):]))
		}
		return nil
	})
	return ids, err
}

func deleteRecordKeys(txn *badger.Txn, coll, id string, m meta) error {
	for n := m.nextChunk - uint64(m.chunks); n < m.nextChunk; n++ {
		if err := txn.Delete(chunkKey(coll, id, n)); err != nil {
			return err
		}
	}
	for _, p := range []byte{'r', 's', 'p', 'a', 'q', 'l'} {
		if err := txn.Delete(recKey(p, coll, id)); err != nil {
			return err
		}
	}
	return nil
}

func getKey(txn *badger.Txn, key []byte) ([]byte, bool, error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	v, err := item.ValueCopy(nil)
	return v, true, err
}
