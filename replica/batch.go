package replica

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

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
	return r.batchOpPre(coll, ids, nil, fn, then)
}

// prepWindow is how many records of a batch batchOpPre prepares at once.
const prepWindow = 32

// prepFunc works out, for the records ts of the window of a batch that
// starts at entry from, loaded, what fn will need (see batchOpPre).
// before are the records of the entries ahead of the window that fn has
// not run on yet: their state may still change before the window's.
type prepFunc func(txn *badger.Txn, from int, ts, before []*touched) error

// batchOpPre is batchOpThen, with pre (if not nil) given the records of
// each window of prepWindow entries, loaded, before fn runs on any of
// them: it may work out what fn will need, in the same transaction and
// under the same locks, and for several records at once. Each window is
// given to pre one window ahead, as fn starts on the window before it
// (see prepFunc), so that work pre starts elsewhere for the next window
// runs while fn stores this one.
func (r *Replica) batchOpPre(coll string, ids []string, pre prepFunc, fn func(i int, txn *badger.Txn, t *touched) (keep bool, err error), then func(txn *badger.Txn) error) ([]*touched, error) {
	return r.batchParts(coll, ids, pre, fn, then, nil)
}

// partGuard lets a batch's caller take back what fn added to its own
// state for a part whose transaction is retried in smaller parts (undo),
// or settle it once the part is over (keep). Either is called once.
type partGuard struct {
	keep, undo func()
	// drain, if set, runs last in each part's transaction, whatever its
	// outcome: work on the part's documents still running elsewhere ends
	// before the batch caches or drops them.
	drain func()
}

// partFault, if set (by tests), is called last in each part's
// transaction with the part's bounds and whether it is the batch's last
// part; an error it returns fails that transaction.
var partFault atomic.Pointer[func(lo, hi int, last bool) error]

// batchParts is batchOpPre. With guard (see partGuard), a batch whose
// writes pass Badger's limit on one transaction (ErrTxnTooBig: a read
// model is rewritten whole on each change, and indexes add to it, so
// what a batch writes is not bounded by what it was given) is retried in
// parts of half the size, each its own transaction, until each fits.
// Each record's writes stay in one transaction, so its read model and
// index entries always match its document; then runs only with the last part, so what
// it records (a cursor) is stored with, or after, every record. Parts
// committed before a failure are the relay's data, which the next sync
// applies again idempotently. A single record whose writes pass the
// limit alone fails the batch.
func (r *Replica) batchParts(coll string, ids []string, pre prepFunc, fn func(i int, txn *badger.Txn, t *touched) (keep bool, err error), then func(txn *badger.Txn) error, guard func() partGuard) ([]*touched, error) {
	defer r.mem.wrote(len(ids)) // last, with the records' locks released
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
	type span struct{ lo, hi int }
	parts := []span{{0, len(ids)}}
	var order []*touched
	for len(parts) > 0 {
		p := parts[0]
		last := len(parts) == 1
		g := partGuard{keep: func() {}, undo: func() {}}
		if guard != nil {
			g = guard()
		}
		b := &batchRun{r: r, coll: coll, byID: map[string]*touched{}}
		done := r.writing()
		err = r.db.Update(func(txn *badger.Txn) error {
			if g.drain != nil {
				defer g.drain()
			}
			// window loads the records of the window at from and gives
			// them to pre, with before, those of the window fn is on.
			window := func(from int, before []*touched) ([]*touched, error) {
				ts := make([]*touched, 0, prepWindow)
				for _, id := range ids[from:min(from+prepWindow, p.hi)] {
					t, err := b.touch(txn, id)
					if err != nil {
						return nil, err
					}
					ts = append(ts, t)
				}
				return ts, pre(txn, from, ts, before)
			}
			var next []*touched // the window after the one fn is on, prepared
			for i := p.lo; i < p.hi; i++ {
				id := ids[i]
				if pre != nil && (i-p.lo)%prepWindow == 0 {
					cur := next
					if i == p.lo {
						var werr error
						if cur, werr = window(i, nil); werr != nil {
							return werr
						}
					}
					next = nil
					if j := i + prepWindow; j < p.hi {
						var werr error
						if next, werr = window(j, cur); werr != nil {
							return werr
						}
					}
				}
				t, err := b.touch(txn, id)
				if err != nil {
					return err
				}
				if t.corrupt != nil {
					continue
				}
				keep, err := fn(i, txn, t)
				if err != nil {
					return err
				}
				if err := b.kept(txn, t, keep); err != nil {
					return err
				}
			}
			if last && then != nil {
				if err := then(txn); err != nil {
					return err
				}
			}
			if f := partFault.Load(); f != nil {
				return (*f)(p.lo, p.hi, last)
			}
			return nil
		})
		done()
		b.end(err)
		if guard != nil && p.hi-p.lo > 1 && errors.Is(err, badger.ErrTxnTooBig) {
			g.undo()
			// The rest of the batch goes in parts of half the size too:
			// its records are likely alike, and a part found too big
			// is found so only after writing much of it.
			size := (p.hi - p.lo + 1) / 2
			parts = parts[:0]
			for lo := p.lo; lo < len(ids); lo += size {
				parts = append(parts, span{lo, min(lo+size, len(ids))})
			}
			continue
		}
		g.keep()
		order = append(order, b.order...)
		if guard != nil && errors.Is(err, badger.ErrTxnTooBig) {
			err = fmt.Errorf("%w: %s/%s alone writes more than one store transaction holds (its document, read model and index entries): %w", ErrTooLarge, coll, ids[p.lo], err)
		}
		if err != nil {
			return order, err
		}
		parts = parts[1:]
	}
	return order, nil
}

// batchRun is one batchOp's records, in the order they first came.
type batchRun struct {
	r     *Replica
	coll  string
	byID  map[string]*touched
	order []*touched
	aside []*crdt.Doc // documents fn chose not to store
	// listed says the transaction put the collection on the list.
	listed bool
}

// touch returns the record's state in the batch, loading its document
// the first time (from the cache or the store) and again after fn set it
// aside (from the transaction's view). A damaged record fails alone: it
// comes back with corrupt set, the rest of the batch goes on, and the
// caller reports it.
func (b *batchRun) touch(txn *badger.Txn, id string) (*touched, error) {
	t := b.byID[id]
	if t != nil && (t.corrupt != nil || t.doc != nil) {
		return t, nil
	}
	d, m, ok, err := b.r.loadDocTxn(txn, b.coll, id, t == nil)
	if errors.Is(err, ErrCorrupt) && t == nil {
		t = &touched{coll: b.coll, id: id, corrupt: err}
		b.byID[id] = t
		b.order = append(b.order, t)
		return t, nil
	}
	if err != nil {
		return nil, err
	}
	if !ok {
		// Deferred: a record taken from the relay (a fresh pull) is
		// stored with its read model worked out in Go, and its Automerge
		// document is built only when something needs it whole (an
		// edit, an export, more changes; see crdt.NewDeferredAs).
		if d, err = crdt.NewDeferredAs(b.r.actorID()); err != nil {
			return nil, err
		}
	}
	if t == nil {
		t = &touched{coll: b.coll, id: id, old: m, new: m, existed: ok, wasDeleted: ok && m.deleted, seen: ok, live: ok && !m.deleted}
		b.byID[id] = t
		b.order = append(b.order, t)
	}
	t.doc, t.new = d, m
	return t, nil
}

// kept settles fn's choice for a record: a document not kept is set
// aside, and a record stored for the first time puts its collection on
// the list.
func (b *batchRun) kept(txn *badger.Txn, t *touched, keep bool) error {
	if !keep {
		b.aside = append(b.aside, t.doc)
		t.doc, t.dirty = nil, true
		return nil
	}
	if !t.existed && len(t.new.heads) > 0 && !b.listed {
		// Once a transaction: a fresh pull stores thousands of records.
		b.listed = true
		return txn.Set(collKey(b.coll), nil)
	}
	return nil
}

// end runs once the transaction is over, with the records still locked:
// it caches the documents stored and publishes their events, or, if the
// transaction failed (err), drops every document it touched. Documents not
// cached now are used by no one and are freed.
func (b *batchRun) end(err error) {
	r := b.r
	freeAside := func() {
		for _, d := range b.aside {
			d.Free()
		}
	}
	if err != nil {
		for _, t := range b.order {
			r.discard(b.coll, t.id, t.doc)
		}
		freeAside()
		return
	}
	var events []Event
	for _, t := range b.order {
		if t.doc == nil || t.dirty {
			r.discard(b.coll, t.id, t.doc)
		} else {
			r.cache.put(cacheKey(b.coll, t.id), t.doc, t.new)
		}
		if ev, ok := t.event(false); ok {
			events = append(events, ev)
		}
	}
	freeAside()
	r.feeds.publish(events)
}

// replaceDoc makes d the document of t, a record in a batch, in place of
// the one loaded for it, which the batch no longer uses: the cache still
// holding it lets it go when the batch caches d (or drops the record), and
// frees it then; otherwise it is freed now.
func (r *Replica) replaceDoc(t *touched, d *crdt.Doc) {
	old := t.doc
	t.doc = d
	if old != nil && old != d && !r.cache.holds(cacheKey(t.coll, t.id), old) {
		old.Free()
	}
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
	// prepared holds the merges prepareMerges started for records of the
	// batch, until mergeOp takes each (see preparedMerges).
	prepared preparedMerges
	// holdMerged has mergeOp keep, in each conflicted entry, the document
	// it merged into, for resolveConflicted to store; the holder frees
	// what it does not pass there (freeMerged).
	holdMerged bool
	// settle, if not nil, has the merge decide the conflicts of the
	// records it names in the batch's transaction (see settling).
	settle *settling
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

// applyHolding is applyBatch, and the records whose conflicts wait for
// the policy keep the documents they were merged into
// (conflicted.merged): pass them to resolveConflicted, or free them with
// freeMerged, even when an error is returned. With merging (op must then
// be mergeOp), it works out several records' merges at once (see
// prepareMerges), and settle (nil: none) decides the conflicts it can in
// the same transaction.
func (r *Replica) applyHolding(coll string, recs []remoteRec, op remoteOp, merging bool, settle *settling) (batchResult, error) {
	var pre func(txn *badger.Txn, from int, ts, before []*touched, res *batchResult) error
	if merging {
		pre = func(txn *badger.Txn, from int, ts, before []*touched, res *batchResult) error {
			return r.prepareMerges(txn, ts, before, recs[from:from+len(ts)], res)
		}
	}
	return r.applyBatchRes(batchResult{holdMerged: true, settle: settle}, coll, recs, op, pre, nil)
}

// applyBatchThen is applyBatch, with then (if not nil) run last in the
// same transaction, given what the batch did so far.
func (r *Replica) applyBatchThen(coll string, recs []remoteRec, op remoteOp, then func(txn *badger.Txn, res *batchResult) error) (batchResult, error) {
	return r.applyBatchRes(batchResult{}, coll, recs, op, nil, then)
}

func (r *Replica) applyBatchRes(res batchResult, coll string, recs []remoteRec, op remoteOp,
	pre func(txn *badger.Txn, from int, ts, before []*touched, res *batchResult) error, then func(txn *badger.Txn, res *batchResult) error) (batchResult, error) {
	ids := make([]string, len(recs))
	for i, rec := range recs {
		ids[i] = rec.id
	}
	var first prepFunc
	if pre != nil {
		first = func(txn *badger.Txn, from int, ts, before []*touched) error { return pre(txn, from, ts, before, &res) }
	}
	var last func(txn *badger.Txn) error
	if then != nil {
		last = func(txn *badger.Txn) error { return then(txn, &res) }
	}
	err := r.batchIntoGuarded(&res, coll, ids, first, func(i int, txn *badger.Txn, t *touched) (bool, error) {
		return op(txn, t, recs[i], &res)
	}, last, res.guard)
	res.prepared.drop() // prepared for a transaction that failed
	return res, err
}

// guard is the partGuard of a batch applying remote records (see
// batchParts): a part retried in smaller ones must not count its
// conflicts and failures twice. While a part runs, the documents held by
// the conflicts of earlier parts are kept aside (mergeOp frees those of
// the entries it folds into new ones), and given back to the entries
// still there once the part is over.
func (b *batchResult) guard() partGuard {
	held := map[string]*crdt.Doc{}
	for i := range b.conflicted {
		if c := &b.conflicted[i]; c.merged != nil {
			held[c.rec.id] = c.merged
			c.merged = nil
		}
	}
	before := slices.Clone(b.conflicted)
	conflicts, failed := b.conflicts, len(b.failed)
	keep := func() {
		for i := range b.conflicted {
			c := &b.conflicted[i]
			if d, ok := held[c.rec.id]; ok && c.merged == nil {
				c.merged = d
				delete(held, c.rec.id)
			}
		}
		for _, d := range held {
			d.Free() // its entry was folded into a later one
		}
	}
	undo := func() {
		freeMerged(b.conflicted) // the failed part's own
		b.conflicted, b.conflicts, b.failed = before, conflicts, b.failed[:failed]
		b.prepared.drop()
		keep()
	}
	return partGuard{keep: keep, undo: undo, drain: func() { b.prepared.wait() }}
}

// onceIn returns the IDs that occur once in ids.
func onceIn(ids []string) map[string]bool {
	n := make(map[string]int, len(ids))
	for _, id := range ids {
		n[id]++
	}
	once := make(map[string]bool, len(n))
	for id, k := range n {
		if k == 1 {
			once[id] = true
		}
	}
	return once
}

// batchInto runs batchOp and adds the events of the records it changed to
// res.
func (r *Replica) batchInto(res *batchResult, coll string, ids []string, fn func(i int, txn *badger.Txn, t *touched) (bool, error)) error {
	return r.batchIntoThen(res, coll, ids, fn, nil)
}

func (r *Replica) batchIntoThen(res *batchResult, coll string, ids []string, fn func(i int, txn *badger.Txn, t *touched) (bool, error), then func(txn *badger.Txn) error) error {
	return r.batchIntoPre(res, coll, ids, nil, fn, then)
}

func (r *Replica) batchIntoPre(res *batchResult, coll string, ids []string, pre prepFunc, fn func(i int, txn *badger.Txn, t *touched) (bool, error), then func(txn *badger.Txn) error) error {
	return r.batchIntoGuarded(res, coll, ids, pre, fn, then, nil)
}

// batchIntoRedoing is batchInto for fn that adds to res only its
// conflicts and failures, and to redo the records it must apply again:
// split as batchParts does, a part retried in smaller ones takes back what
// it added.
func (r *Replica) batchIntoRedoing(res *batchResult, coll string, ids []string, redo *[]remoteRec, fn func(i int, txn *badger.Txn, t *touched) (bool, error)) error {
	return r.batchIntoGuarded(res, coll, ids, nil, fn, nil, func() partGuard {
		conflicts, failed, again := res.conflicts, len(res.failed), len(*redo)
		return partGuard{keep: func() {}, undo: func() {
			res.conflicts, res.failed, *redo = conflicts, res.failed[:failed], (*redo)[:again]
		}}
	})
}

// batchIntoGuarded is batchIntoPre, split as batchParts does with guard.
func (r *Replica) batchIntoGuarded(res *batchResult, coll string, ids []string, pre prepFunc, fn func(i int, txn *badger.Txn, t *touched) (bool, error), then func(txn *badger.Txn) error, guard func() partGuard) error {
	ts, err := r.batchParts(coll, ids, pre, fn, then, guard)
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
