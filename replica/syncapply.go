package replica

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
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
// may repeat) in ONE store transaction, under the records' write locks, so
// a page of a pull or an acknowledged batch costs one fsync, not one per
// record. Then it caches each document and publishes its event. If fn
// returns keep=false the document's new changes are not stored (fn may
// still have written other keys); the record is reloaded from the
// transaction's view if it comes again, and dropped from the cache.
func (r *Replica) batchOp(coll string, ids []string, fn func(i int, txn *badger.Txn, t *touched) (keep bool, err error)) ([]*touched, error) {
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
	err = r.db.Update(func(txn *badger.Txn) error {
		for i, id := range ids {
			t := byID[id]
			if t == nil || t.doc == nil {
				d, m, ok, err := r.loadDocTxn(txn, coll, id, t == nil)
				if err != nil {
					return err
				}
				if !ok {
					if d, err = crdt.New(r.id); err != nil {
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
				t.doc, t.dirty = nil, true
			}
			if keep && !t.existed && len(t.new.heads) > 0 {
				if err := txn.Set(collKey(coll), nil); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		for _, t := range order {
			r.cache.drop(cacheKey(coll, t.id))
		}
		return order, err
	}
	var events []Event
	for _, t := range order {
		if t.doc == nil || t.dirty {
			r.cache.drop(cacheKey(coll, t.id))
		} else {
			r.cache.put(cacheKey(coll, t.id), t.doc, t.new)
		}
		if ev, ok := t.event(false); ok {
			events = append(events, ev)
		}
	}
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
// whether to store the document, and fills in conflicts and hook failures.
type remoteOp func(txn *badger.Txn, t *touched, rec remoteRec, res *batchResult) (keep bool, err error)

// batchResult sums up a batch: the records it changed (one event each),
// conflicts resolved, and records whose merge hook failed.
type batchResult struct {
	events    []Event
	conflicts int
	failed    []string
}

// applyBatch runs op over recs in one store transaction (see batchOp).
func (r *Replica) applyBatch(coll string, recs []remoteRec, op remoteOp) (batchResult, error) {
	var res batchResult
	ids := make([]string, len(recs))
	for i, rec := range recs {
		ids[i] = rec.id
	}
	ts, err := r.batchOp(coll, ids, func(i int, txn *badger.Txn, t *touched) (bool, error) {
		return op(txn, t, recs[i], &res)
	})
	if err != nil {
		return res, fmt.Errorf("ferry: applying %s from the relay: %w", coll, err)
	}
	for _, t := range ts {
		if ev, ok := t.event(false); ok {
			res.events = append(res.events, ev)
		}
	}
	return res, nil
}

// mergeOp imports the relay's changes (or snapshot) for a record. If the
// record has local changes the relay lacks (it is pending) and the import
// brought something new, the fields both sides changed since the version
// they last shared are resolved by res and the decisions committed as a
// change that follows both sides. The record's synced heads become the
// relay's, and it stays pending while it holds changes beyond them. A nil
// res imports without resolving.
func (r *Replica) mergeOp(resolver policy.Resolver) remoteOp {
	return func(txn *badger.Txn, t *touched, rec remoteRec, res *batchResult) (bool, error) {
		coll, id, data, relay := t.coll, t.id, rec.data, rec.relay
		// Changes held back by a failed hook come first: later ones build
		// on them.
		q, qheads, err := readQuarantine(txn, coll, id)
		if err != nil {
			return false, err
		}
		if q != nil {
			data = append(append([]byte(nil), q...), data...)
			if len(relay) == 0 {
				relay = qheads
			}
		}
		_, pending, err := getKey(txn, recKey('p', coll, id))
		if err != nil {
			return false, err
		}
		synced, err := readAcked(txn, coll, id)
		if err != nil {
			return false, err
		}
		d := t.doc
		var local crdt.Snapshot
		if pending && resolver != nil {
			// This device's side of a possible conflict, read before the
			// import rather than forked out of history afterwards.
			if local, err = d.Snapshot(); err != nil {
				return false, err
			}
		}
		n, err := d.Import(data)
		if err != nil {
			return false, err
		}
		if pending && n > 0 && resolver != nil {
			nc, err := resolveConflicts(coll, id, d, local, synced, relay, data, resolver)
			if err != nil {
				// The hook failed: keep the record as it was, and the
				// relay's changes for the next sync.
				r.log.Warn("merge hook failed; record kept pending", "collection", coll, "record", id, "err", err)
				res.failed = append(res.failed, id)
				return false, writeQuarantine(txn, coll, id, data, relay)
			}
			res.conflicts += nc
			if nc > 0 {
				if _, err := d.Commit("ferry: conflict resolution", r.opts.Clock()); err != nil {
					return false, err
				}
			}
		}
		if q != nil {
			if err := txn.Delete(recKey('q', coll, id)); err != nil {
				return false, err
			}
		}
		if !t.existed && len(t.new.heads) == 0 && q == nil && d.Heads().Equal(relay) {
			// A record new to this device, arriving whole (a fresh pull's
			// snapshot): store the bytes as they came instead of
			// re-exporting them.
			return true, r.storeArrived(txn, t, data, relay)
		}
		return true, r.storeSynced(txn, t, relay)
	}
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
	if nm.heads.Equal(relay) {
		// Nothing beyond what the relay holds: not pending, without
		// exporting changes to find out.
		return txn.Delete(recKey('p', t.coll, t.id))
	}
	rest, err := t.doc.ChangesSince(relay)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return txn.Set(recKey('p', t.coll, t.id), nil)
	}
	return txn.Delete(recKey('p', t.coll, t.id))
}

// resolveConflicts compares, field by field, the version both sides last
// shared (synced), this device's (local, read before the import) and the
// relay's, and writes the resolver's decision for each conflict into d,
// which holds both sides. It returns how many conflicts it resolved.
//
// Only the base is forked out of history (a replay, so this runs only for
// records with both local and incoming changes); the relay's version is the
// base plus the changes that came in. If those need changes the base lacks
// (the synced heads were behind what the relay holds), the relay's version
// is forked at its heads instead.
func resolveConflicts(coll, id string, d *crdt.Doc, local crdt.Snapshot, synced, relay crdt.Heads, incoming []byte, res policy.Resolver) (int, error) {
	fork := func(h crdt.Heads) (*crdt.Doc, error) {
		if len(h) == 0 {
			return crdt.New("")
		}
		return d.Fork(h)
	}
	base, err := fork(synced)
	if err != nil {
		return 0, err
	}
	baseSnap, err := base.Snapshot()
	if err != nil {
		return 0, err
	}
	remote := base
	if _, err := remote.Import(incoming); err != nil {
		if remote, err = fork(relay); err != nil {
			return 0, err
		}
	}
	remoteSnap, err := remote.Snapshot()
	if err != nil {
		return 0, err
	}
	diff := crdt.Diff3Snapshots(baseSnap, local, remoteSnap)
	if len(diff.Conflicts) == 0 {
		return 0, nil
	}
	localRec, remoteRec := local.Fields(), remoteSnap.Fields()
	for _, c := range diff.Conflicts {
		pc := &policy.Conflict{
			Collection: coll, Record: id, Path: c.Path,
			Base: c.Base, Local: c.Local, Remote: c.Remote,
			BaseSet: c.BaseSet, LocalSet: c.LocalSet, RemoteSet: c.RemoteSet,
			LocalRecord: localRec, RemoteRecord: remoteRec,
		}
		dec, err := res.Resolve(pc)
		if err != nil {
			return 0, fmt.Errorf("%w: %s %v: %w", ErrMergeHook, id, c.Path, err)
		}
		if err := decide(d, c, dec); err != nil {
			return 0, fmt.Errorf("ferry: writing the resolution of %s %v: %w", id, c.Path, err)
		}
	}
	return len(diff.Conflicts), nil
}

// decide writes a decision into the merged document. A value equal to what
// the merge already shows writes nothing: Automerge picks the same winner
// on every replica, so they agree already.
func decide(d *crdt.Doc, c crdt.Conflict, dec policy.Decision) error {
	if c.IsDelete() {
		if dec.Delete {
			return d.SetDeleted(true)
		}
		if err := d.SetDeleted(false); err != nil {
			return err
		}
		fields, ok := dec.Value.(map[string]any)
		if !ok {
			return fmt.Errorf("%w: a record conflict is decided with a map of fields or a delete, not %T", crdt.ErrType, dec.Value)
		}
		return replaceFields(d, fields)
	}
	if dec.Delete {
		return d.Delete(c.Path...)
	}
	return d.Set(c.Path, dec.Value)
}

// replaceFields makes the record's fields exactly fields.
func replaceFields(d *crdt.Doc, fields map[string]any) error {
	cur, err := d.Fields()
	if err != nil {
		return err
	}
	for k := range cur {
		if _, keep := fields[k]; !keep {
			if err := d.Delete(k); err != nil {
				return err
			}
		}
	}
	return d.Put(fields)
}

// replaceOp makes a record exactly the relay's snapshot, discarding local
// changes (refresh from the relay).
func (r *Replica) replaceOp(txn *badger.Txn, t *touched, rec remoteRec, _ *batchResult) (bool, error) {
	d, err := crdt.Load(rec.data, r.id)
	if err != nil {
		return false, err
	}
	if err := deleteRecordKeys(txn, t.coll, t.id, t.new); err != nil {
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
		return false, deleteRecordKeys(txn, coll, id, t.new)
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
		var err error
		if mine, err = d.Fields(); err != nil {
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
	for _, p := range []byte{'r', 's', 'p', 'a', 'q'} {
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

// Quarantine (q/<coll>\0<id>): the relay's changes for a record whose merge
// hook failed, with the relay heads they lead to, kept for the next sync.
func writeQuarantine(txn *badger.Txn, coll, id string, data []byte, relay crdt.Heads) error {
	hb := relay.Bytes()
	v := binary.AppendUvarint(nil, uint64(len(hb)))
	v = append(append(v, hb...), data...)
	return txn.Set(recKey('q', coll, id), v)
}

func readQuarantine(txn *badger.Txn, coll, id string) ([]byte, crdt.Heads, error) {
	v, ok, err := getKey(txn, recKey('q', coll, id))
	if err != nil || !ok {
		return nil, nil, err
	}
	n, k := binary.Uvarint(v)
	if k <= 0 || uint64(len(v)-k) < n {
		return nil, nil, fmt.Errorf("ferry: quarantine of %s/%s is corrupt", coll, id)
	}
	h, err := crdt.HeadsFromBytes(v[k : k+int(n)])
	if err != nil {
		return nil, nil, err
	}
	return v[k+int(n):], h, nil
}

func (r *Replica) quarantined(coll string) (map[string]bool, error) {
	out := map[string]bool{}
	err := r.db.View(func(txn *badger.Txn) error {
		prefix := collPrefix('q', coll)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			out[string(it.Item().Key()[len(prefix):])] = true
		}
		return nil
	})
	return out, err
}
