package replica

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
)

// Merging the relay's changes into a record takes two steps when the record
// has local changes the relay lacks (it is pending) and the import brings
// something new: the fields both sides changed since the version they last
// shared may conflict, and the policy decides them. A merge hook is the
// app's code, and it may read the replica, so it never runs under a record
// lock or inside a store transaction:
//
//  1. mergeOp, inside the batch's transaction, imports into a copy of the
//     record's document and compares the three versions. A record with
//     conflicts is not written (its document stays as it was): it is
//     listed in batchResult.conflicted with what the decision needs,
//     including, when the batch holds them, the merged copy.
//  2. resolveConflicted asks the policy with no lock held, then, in a new
//     transaction, checks that the record has not changed meanwhile (its
//     heads are the ones the conflicts were found against), writes the
//     decisions into the merged copy as one change that follows both
//     sides, and stores it. A record edited meanwhile goes back to step 1.
//
// The copy is what makes step 2 cheap: without it the record would be
// loaded from the store and the relay's changes imported (and checked)
// again, which cost more than the decisions themselves.
//
// A built-in policy (prefer-local, prefer-cloud) is no app code: it reads
// nothing and cannot fail. With one, step 1 decides the conflicts itself,
// in the merged copy, and stores the record with its resolution in the
// batch's transaction (see settling): no second transaction, and the
// decisions are made on every core with the merges.

// conflicted is a record whose merge waits for the policy.
type conflicted struct {
	rec       remoteRec  // as the relay sent it
	data      []byte     // what was imported: quarantined changes, then rec.data
	relay     crdt.Heads // the relay's heads once data is applied
	local     crdt.Heads // the record's heads the conflicts were found against
	conflicts []crdt.Conflict
	// The whole records as each side has them, for the hook.
	localRec, remoteRec map[string]any
	// merged is the record's document with data imported, owned by this
	// entry until resolveConflicted stores it or frees it; nil when the
	// batch did not hold it (see batchResult.holdMerged).
	merged *crdt.Doc
}

// freeMerged frees the merged documents the entries still own.
func freeMerged(list []conflicted) {
	for i := range list {
		if list[i].merged != nil {
			list[i].merged.Free()
			list[i].merged = nil
		}
	}
}

// mergeOp imports the relay's changes (or snapshot) for a record. A record
// that is pending and gets new changes is compared field by field with the
// relay's version; if they conflict, it is left as it was and listed in
// res.conflicted (see above). Otherwise the import is stored, the record's
// synced heads become the relay's, and it stays pending while it holds
// changes beyond them.
func (r *Replica) mergeOp(txn *badger.Txn, t *touched, rec remoteRec, res *batchResult) (bool, error) {
	coll, id := t.coll, t.id
	if i := slices.IndexFunc(res.conflicted, func(c conflicted) bool { return c.rec.id == id }); i >= 0 {
		// An earlier entry of this batch for the record waits for the
		// policy, and the record is as it was: this entry builds on that
		// one, so the two are compared again as one, against the relay's
		// latest version (deciding on the earlier one's values would
		// revert the relay's later edits).
		c := res.conflicted[i]
		res.conflicted = slices.Delete(res.conflicted, i, i+1)
		freeMerged([]conflicted{c})
		// A new slice: the entries' bytes may share the frame's buffer.
		rec.data = slices.Concat(c.rec.data, rec.data)
	}
	// Changes held back by a failed hook come first: later ones build on
	// them.
	q, qheads, err := readQuarantine(txn, coll, id)
	if err != nil {
		return false, err
	}
	data, relay := rec.data, rec.relay
	if q != nil {
		data = append(append([]byte(nil), q...), data...)
		if len(relay) == 0 {
			relay = qheads
		}
	}
	// What prepareMerges worked out for this entry, if it did: it left
	// out the entries whose changes the record holds.
	m, prepared := res.prepared.take(t)
	if !prepared && q == nil && t.holdsAll(relay) {
		// The record holds the relay's version already (this device's own
		// changes coming back, say): importing data, whose changes that
		// version holds, would add nothing. Only the synced heads move;
		// bytes that are not Automerge's are refused as Import would.
		if _, err := crdt.ParseChanges(data); err != nil {
			return false, err
		}
		synced, err := laterSynced(txn, t, relay)
		if err != nil {
			return false, err
		}
		return true, r.storeSynced(txn, t, synced, nil)
	}
	_, pending, err := getKey(txn, recKey('p', coll, id))
	if err != nil {
		return false, err
	}
	if prepared && m.inPlace && (q != nil || m.pending != pending) {
		// Merged into the document itself: it cannot be merged again.
		return false, fmt.Errorf("ferry: %s/%s changed between its merge and its store", coll, id)
	}
	if !prepared || q != nil || m.pending != pending {
		m.free()
		m = merge(t.doc, pending, data, relay, res.settle.covers(id))
		if res.settle.covers(id) {
			res.settle.settle(&m, id)
		}
	}
	if m.err != nil {
		m.free()
		return false, m.err
	}
	d := t.doc
	if m.merged != nil {
		if m.diff != nil && len(m.diff.Conflicts) > 0 && !m.settled {
			c := conflicted{
				rec: rec, data: data, relay: relay, local: m.localHeads, conflicts: m.diff.Conflicts,
				localRec: m.local.Fields(), remoteRec: m.remote.Fields(), merged: m.merged,
			}
			if !res.holdMerged {
				m.free()
				c.merged = nil
			}
			res.conflicted = append(res.conflicted, c)
			return true, nil // stored as it was: nothing written
		}
		r.replaceDoc(t, m.merged)
		d = m.merged
		if m.settled {
			// As storeResolution does: only a leased sync pushes it.
			res.conflicts += len(m.diff.Conflicts)
			if m.made {
				if err := txn.Set(recKey('l', coll, id), nil); err != nil {
					return false, err
				}
			}
		}
	}
	if q != nil {
		if err := txn.Delete(recKey('q', coll, id)); err != nil {
			return false, err
		}
	}
	if !t.existed && len(t.new.heads) == 0 && q == nil && m.view.headsOf(d).Equal(relay) {
		// A record new to this device, arriving whole (a fresh pull's
		// snapshot): store the bytes as they came instead of
		// re-exporting them.
		return true, r.storeArrived(txn, t, data, relay, m.view)
	}
	return true, r.storeSynced(txn, t, relay, m.view)
}

// laterSynced returns the heads to record as the relay's for a record that
// holds every change of relay, a version of the relay's: relay, unless the
// heads recorded already hold all of relay's changes. The relay's copy of a
// record only grows, but its versions may reach the device late (a live
// session's own earlier push coming back after a later one was
// acknowledged): setting the heads back would mark the record pending
// with nothing of its own to push, and a live session, which pushes only
// what is edited, would leave it so.
func laterSynced(txn *badger.Txn, t *touched, relay crdt.Heads) (crdt.Heads, error) {
	acked, err := readAcked(txn, t.coll, t.id)
	if err != nil || len(acked) == 0 || acked.Equal(relay) {
		return relay, err
	}
	since, err := t.doc.ChangesSince(acked)
	if errors.Is(err, crdt.ErrUnknownHeads) {
		return relay, nil
	}
	if err != nil {
		return nil, err
	}
	if len(since) == 0 {
		return acked, nil // relay's changes are all in acked's history
	}
	changes, err := crdt.ParseChanges(since)
	if err != nil {
		return nil, err
	}
	for _, c := range changes {
		if slices.Contains(relay, c.Hash) {
			return relay, nil // relay holds changes beyond acked
		}
	}
	return acked, nil
}

// holdsAll reports whether the record's document holds every change of
// heads (none: false). A record neither stored before nor by this batch
// has a new, empty document: it holds none, which is known without
// asking Automerge (a call for each head, on the batch's goroutine, for
// every record of a fresh pull).
func (t *touched) holdsAll(heads crdt.Heads) bool {
	if !t.existed && len(t.new.heads) == 0 {
		return false
	}
	return holdsAll(t.doc, heads)
}

// holdsAll reports whether d holds every change of heads (none: false).
func holdsAll(d *crdt.Doc, heads crdt.Heads) bool {
	for _, h := range heads {
		if !d.Has(h) {
			return false
		}
	}
	return len(heads) > 0
}

// merging is the part of merging one entry into a record that needs only
// the record's document, no store: mergeOp's work but for reading and
// writing the store, so that a batch can do it for several records at
// once (prepareMerges).
type merging struct {
	pending bool
	err     error
	// For a pending record that got something new: the merge, made in a
	// copy of the document (a clone, not a replay of history), so that a
	// record with conflicts keeps its document as it is stored and the
	// copy goes on to the resolution; and what the policy needs (diff nil:
	// the relay's version holds every change of the record's, nothing to
	// decide). This device's side is read before the import rather than
	// forked out of history afterwards.
	merged        *crdt.Doc
	diff          *crdt.FieldDiff
	localHeads    crdt.Heads
	local, remote crdt.Snapshot
	// settled says merged holds the policy's decisions on diff's
	// conflicts, committed (made: as a change; the decisions may all be
	// what the merge shows already), for mergeOp to store with the record.
	settled, made bool
	// inPlace says merged is the record's document itself, not a copy.
	inPlace bool
	// view, if set, is the read model of the document the merge leaves to
	// store, worked out where the merge ran (see prepareMerges).
	view *preparedView
}

// stores reports whether mergeOp stores the document m leaves (the
// record's, or merged) rather than waiting for the policy.
func (m *merging) stores() bool {
	return m.err == nil && (m.merged == nil || m.diff == nil || len(m.diff.Conflicts) == 0 || m.settled)
}

// preparedView is a record's read model worked out away from the
// batch's goroutine, for the batch to store as it is if the record's
// document is still doc at heads: doc's fields packed (see packView),
// and its tombstone, which is a call into Automerge too.
type preparedView struct {
	doc     *crdt.Doc
	heads   crdt.Heads
	deleted bool
	packed  []byte
	err     error // packView's
}

// prepareView reads d's read model. The caller owns d for the time.
func prepareView(d *crdt.Doc) *preparedView {
	pv := &preparedView{doc: d, heads: d.Heads(), deleted: d.Deleted()}
	pv.packed, pv.err = packView(d)
	return pv
}

// headsOf returns doc's heads: those pv read, if it was read from doc
// (which nothing changes between the merge that read it and its store).
func (pv *preparedView) headsOf(doc *crdt.Doc) crdt.Heads {
	if pv != nil && pv.doc == doc {
		return pv.heads
	}
	return doc.Heads()
}

// deletedOf reports whether doc, at heads, is a tombstone: as pv read it,
// if it is doc's read model at heads.
func (pv *preparedView) deletedOf(doc *crdt.Doc, heads crdt.Heads) bool {
	if pv.of(doc, heads) {
		return pv.deleted
	}
	return doc.Deleted()
}

// of reports whether pv is the read model of doc at heads. The same
// document at the same heads holds the same changes, so the same fields.
func (pv *preparedView) of(doc *crdt.Doc, heads crdt.Heads) bool {
	return pv != nil && pv.doc == doc && pv.heads.Equal(heads)
}

func (m merging) free() {
	if m.merged != nil && !m.inPlace {
		m.merged.Free()
	}
}

// merge imports data into d, the record's document, or, if the record is
// pending, into a copy of d compared three ways with d and the relay's
// version (heads relay), from the version the two share (mergeBase). With
// inPlace, the record's conflicts are settled with the merge (see
// settling), so the record is stored merged whatever they are: the import
// goes into d itself, which costs no copy and indexes only the changes d
// made lately rather than a copy's whole history. If that merge then
// fails, the batch fails, and drops d.
func merge(d *crdt.Doc, pending bool, data []byte, relay crdt.Heads, inPlace bool) (m merging) {
	m.pending = pending
	if !pending {
		_, m.err = d.Import(data)
		return m
	}
	merged := d
	if inPlace {
		// This device's side, read now: the import goes into d itself.
		if m.local, m.err = d.Snapshot(); m.err != nil {
			return m
		}
	} else {
		var err error
		if merged, err = d.Fork(nil); err != nil {
			m.err = err
			return m
		}
	}
	m.inPlace = inPlace
	drop := func() {
		if !inPlace {
			merged.Free()
		}
	}
	// On an error Import leaves the document as it was. What it reports
	// (the heads around it, the stream's changes and those it added) is
	// what the comparison below needs, not read again.
	imp, err := merged.ImportChanges(data)
	if err != nil || imp.N == 0 {
		drop()
		m.err = err
		return m
	}
	m.localHeads = imp.Before
	if len(relay) > 0 && imp.After.Equal(relay) {
		// The relay's version holds every change of the record's here:
		// this device is behind it, with nothing of its own to weigh
		// against it. Its pending changes reached the relay some other
		// way (pushed, the acknowledgement lost; or another device's,
		// applied early and pushed again by that device), and the
		// relay's later edits of the same fields must not be undone as
		// if they conflicted with them.
		m.merged = merged
		return m
	}
	if !inPlace {
		if m.local, m.err = d.Snapshot(); m.err != nil {
			drop()
			return m
		}
	}
	base, err := mergeBase(merged, imp, relay)
	if err != nil {
		drop()
		m.err = err
		return m
	}
	if m.diff, m.remote, m.err = threeWay(merged, m.local, base, relay, data, imp.Stream); m.err != nil {
		drop()
		return m
	}
	m.merged = merged
	return m
}

// prepareMerges works out, for several records at once, the merges
// mergeOp then stores (see merging): ts are the records of one window of a
// batch, loaded, and recs their entries. It reads what each needs from the
// store first, as a transaction is not safe for concurrent use, then
// starts the merges on up to GOMAXPROCS goroutines and returns, leaving
// them running while mergeOp stores the records before (see
// preparedMerges): each record's document is its own, and the batch holds
// every record's write lock. The batch prepares a window while it stores
// the one before, whose records are before: it has applied every entry
// ahead of those, and mergeOp has taken (waited for) every merge of
// theirs, so the state here of a record that is not among before is what
// mergeOp will see. Left to mergeOp: records among before or that occur
// more than once in the window, whose earlier entry waits for the policy
// (mergeOp joins the two), held back by a failed hook, damaged, or
// holding the entry's changes already; and everything when there is no
// second core to use.
func (r *Replica) prepareMerges(txn *badger.Txn, ts, before []*touched, recs []remoteRec, res *batchResult) error {
	workers := runtime.GOMAXPROCS(0)
	if workers < 2 {
		return nil
	}
	type job struct {
		t       *touched
		pending bool
		rec     remoteRec
	}
	// A record the entries before the window still change is left to
	// mergeOp, as is one with more than one entry in the window.
	inWindow := make(map[*touched]int, len(ts)+len(before))
	for _, t := range before {
		inWindow[t] += 2
	}
	for _, t := range ts {
		inWindow[t]++
	}
	var jobs []job
	for i, t := range ts {
		if t.corrupt != nil || t.doc == nil || inWindow[t] > 1 ||
			slices.ContainsFunc(res.conflicted, func(c conflicted) bool { return c.rec.id == t.id }) {
			continue
		}
		q, _, err := readQuarantine(txn, t.coll, t.id)
		if err != nil {
			return err
		}
		if q != nil || t.holdsAll(recs[i].relay) {
			continue
		}
		_, pending, err := getKey(txn, recKey('p', t.coll, t.id))
		if err != nil {
			return err
		}
		jobs = append(jobs, job{t: t, pending: pending, rec: recs[i]})
	}
	if len(jobs) < 2 {
		return nil
	}
	out := make([]*preparedMerge, len(jobs))
	for k, j := range jobs {
		out[k] = &preparedMerge{done: make(chan struct{})}
		res.prepared.put(j.t, out[k])
	}
	settle := res.settle
	work := make([]func(), len(jobs))
	for k := range jobs {
		work[k] = func() {
			j, pm := jobs[k], out[k]
			if f := mergeStarting; f != nil {
				f(j.t.id)
			}
			covered := settle.covers(j.t.id)
			pm.m = merge(j.t.doc, j.pending, j.rec.data, j.rec.relay, covered)
			if covered {
				settle.settle(&pm.m, j.t.id)
			}
			if pm.m.stores() {
				// The read model too: packing the fields is calls
				// into Automerge that the batch's goroutine, which
				// stores one record after another, would make alone.
				d := pm.m.merged
				if d == nil {
					d = j.t.doc
				}
				pm.m.view = prepareView(d)
			}
			close(pm.done)
		}
	}
	res.prepared.queue(work, workers)
	return nil
}

// mergeStarting, if set (by tests, before any sync starts), is called
// with a record's ID on the goroutine about to merge it.
var mergeStarting func(id string)

// preparedMerge is a merge prepareMerges started: m, once done is closed.
type preparedMerge struct {
	done chan struct{}
	m    merging
}

// preparedMerges are the merges a batch started ahead of mergeOp. They run
// on their own goroutines while the batch stores the records before them:
// mergeOp waits for a record's merge only when it comes to that record, so
// storing one record (its chunk, read model and keys, in the batch's
// transaction) overlaps merging the next. Each merge uses only its own
// record's document, which the batch holds locked and does not touch
// until mergeOp takes the merge. The batch's transaction ends with wait
// (partGuard.drain), so no merge outlives it.
type preparedMerges struct {
	byRec map[*touched]*preparedMerge
	wg    *sync.WaitGroup
	// q holds the merges queued and not started, in the order the batch
	// takes them, for running goroutines (up to GOMAXPROCS) to start.
	q *mergeQueue
}

type mergeQueue struct {
	mu      sync.Mutex
	work    []func()
	running int
}

func (p *preparedMerges) put(t *touched, pm *preparedMerge) {
	if p.byRec == nil {
		p.byRec, p.wg, p.q = map[*touched]*preparedMerge{}, &sync.WaitGroup{}, &mergeQueue{}
	}
	p.byRec[t] = pm
}

// queue adds work behind the merges queued before, to run on up to
// workers goroutines that wait waits for: a window's merges queued ahead
// start once those of the window before it have.
func (p *preparedMerges) queue(work []func(), workers int) {
	q := p.q
	q.mu.Lock()
	defer q.mu.Unlock()
	q.work = append(q.work, work...)
	for ; q.running < min(workers, len(q.work)); q.running++ {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for {
				q.mu.Lock()
				if len(q.work) == 0 {
					q.running--
					q.mu.Unlock()
					return
				}
				f := q.work[0]
				q.work = q.work[1:]
				q.mu.Unlock()
				f()
			}
		}()
	}
}

// take removes t's merge, waiting for it to finish, if one was started.
func (p *preparedMerges) take(t *touched) (merging, bool) {
	pm, ok := p.byRec[t]
	if !ok {
		return merging{}, false
	}
	delete(p.byRec, t)
	<-pm.done
	return pm.m, true
}

// wait waits for every merge started.
func (p *preparedMerges) wait() {
	if p.wg != nil {
		p.wg.Wait()
	}
}

// drop waits for the merges started and frees those no one took.
func (p *preparedMerges) drop() {
	p.wait()
	for _, pm := range p.byRec {
		pm.m.free()
	}
	p.byRec = nil
}

// settling has a batch's merges decide the conflicts they find at once,
// in the merged copy, for mergeOp to store in the batch's transaction (see
// the top of this file). Only for a built-in resolver, which reads nothing
// and cannot fail, and only for records that occur once in the batch: a
// record's later entry in the same batch is compared with its earlier one
// as one, against the relay's latest version, as resolveConflicted does.
type settling struct {
	coll string
	res  policy.Resolver
	now  time.Time // stamps the resolutions
	once map[string]bool
}

// newSettling returns the settling of a batch of recs with res, or nil if
// res is not built in.
func newSettling(coll string, recs []remoteRec, res policy.Resolver, now time.Time) *settling {
	if res == nil || !policy.Builtin(res) {
		return nil
	}
	ids := make([]string, len(recs))
	for i, rec := range recs {
		ids[i] = rec.id
	}
	return &settling{coll: coll, res: res, now: now, once: onceIn(ids)}
}

// covers reports whether the record's conflicts are decided in its merge.
func (s *settling) covers(id string) bool { return s != nil && s.once[id] }

// settle decides m's conflicts, if it has any, into m.merged and commits
// them, as storeResolution does. A failure to decide or to write the
// decisions is m's error: the merge went into the record's document
// itself (merge's inPlace), which cannot wait for the policy as it is.
func (s *settling) settle(m *merging, id string) {
	if m.err != nil || m.merged == nil || m.diff == nil || len(m.diff.Conflicts) == 0 {
		return
	}
	c := conflicted{rec: remoteRec{id: id}, conflicts: m.diff.Conflicts, localRec: m.local.Fields(), remoteRec: m.remote.Fields()}
	decisions, err := ask(s.coll, c, s.res)
	if err != nil {
		m.err = err // a built-in resolver does not fail
		return
	}
	for i, cf := range c.conflicts {
		if err := decide(m.merged, cf, decisions[i]); err != nil {
			m.err = fmt.Errorf("ferry: writing the resolution of %s %v: %w", id, cf.Path, err)
			return
		}
	}
	made, err := m.merged.Commit("ferry: conflict resolution", s.now)
	if err != nil {
		m.err = err
		return
	}
	m.settled, m.made = true, made
}

// mergeBase returns the heads of the version a pending record and the
// relay's version of it share, the base of their three-way comparison: d
// holds both, the record's as heads imp.Before and the relay's as heads
// relay, after imp, the import of the relay's changes. That version is
// what the relay acknowledged of the record, and past it every change of
// the record's that the relay's version holds too: another device's
// change applied early (before the relay's copy was durable, and pushed
// again since if the relay lost it), or a push of this device's whose
// acknowledgement was lost. Counted as this device's, such changes would
// conflict with the relay's later edits of the same fields, and a policy
// preferring this device would write them back over those edits.
//
// The changes the import added (new) are the relay's version's that the
// record lacked; every other change of the relay's version is in both, and
// is reached from the relay's heads or from new's dependencies that are
// not new. So those are the shared version's heads (some may be ancestors
// of others, which names the same version). It costs time in proportion to
// new: the import lists them, and when its list does not account for the
// heads after it, the document's journal, which covers imp.Before, does.
func mergeBase(d *crdt.Doc, imp crdt.Imported, relay crdt.Heads) (crdt.Heads, error) {
	added := imp.Added
	if !leadsTo(imp.Before, added, imp.After) {
		since, err := d.ChangesSince(imp.Before)
		if err != nil {
			return nil, err
		}
		if added, err = crdt.ParseChanges(since); err != nil {
			return nil, err
		}
	}
	isNew := make(map[crdt.Hash]bool, len(added))
	for _, c := range added {
		isNew[c.Hash] = true
	}
	var base crdt.Heads
	seen := map[crdt.Hash]bool{}
	add := func(h crdt.Hash) {
		if !isNew[h] && !seen[h] {
			seen[h] = true
			base = append(base, h)
		}
	}
	for _, h := range relay {
		// Heads the record lacks (a relay's message that does not reach
		// the heads it names) name no version both hold; threeWay takes
		// the relay's version its own way then.
		if d.Has(h) {
			add(h)
		}
	}
	for _, c := range added {
		for _, h := range c.Deps {
			add(h)
		}
	}
	return base, nil
}

// leadsTo reports whether changes, each replacing the heads it depends on,
// take the version at heads from to the one at heads to.
func leadsTo(from crdt.Heads, changes []crdt.ChangeInfo, to crdt.Heads) bool {
	heads := make(map[crdt.Hash]bool, len(from)+1)
	for _, h := range from {
		heads[h] = true
	}
	for _, c := range changes {
		for _, d := range c.Deps {
			delete(heads, d)
		}
		heads[c.Hash] = true
	}
	if len(heads) != len(to) {
		return false
	}
	for _, h := range to {
		if !heads[h] {
			return false
		}
	}
	return true
}

// extends reports whether stream, the change chunks of incoming bytes,
// take the version at heads base to the one at heads want (see leadsTo).
// Then importing them into the version at base gives the version at want
// (the same set of changes), or fails for want of a dependency, where
// threeWay reads the version at want anyway.
func extends(base crdt.Heads, stream []crdt.ChangeInfo, want crdt.Heads) bool {
	return len(stream) > 0 && leadsTo(base, stream, want)
}

// threeWay compares, field by field, the version both sides share (heads
// shared, see mergeBase), this device's (local, read before the import)
// and the relay's; d holds both sides, incoming (whose change chunks are
// stream) imported. It returns the diff and the relay's version.
//
// Both other versions are read out of history (a replay, so this runs only
// for records with both local and incoming changes): the relay's at its
// heads when it is the base plus the changes that came in (see leadsTo),
// as d holds it checked already; otherwise, as the base with incoming
// imported into it, or if that import fails, at the relay's heads.
func threeWay(d *crdt.Doc, local crdt.Snapshot, shared, relay crdt.Heads, incoming []byte, stream []crdt.ChangeInfo) (*crdt.FieldDiff, crdt.Snapshot, error) {
	baseSnap, err := d.SnapshotAt(shared)
	if err != nil {
		return nil, crdt.Snapshot{}, err
	}
	if len(relay) > 0 && extends(shared, stream, relay) {
		if remoteSnap, err := d.SnapshotAt(relay); err == nil {
			return crdt.Diff3Snapshots(baseSnap, local, remoteSnap), remoteSnap, nil
		}
	}
	remote, err := relayVersion(d, shared, relay, incoming)
	if err != nil {
		return nil, crdt.Snapshot{}, err
	}
	defer remote.Free()
	remoteSnap, err := remote.Snapshot()
	if err != nil {
		return nil, crdt.Snapshot{}, err
	}
	return crdt.Diff3Snapshots(baseSnap, local, remoteSnap), remoteSnap, nil
}

// forkAt returns d as of heads h (none: an empty document).
func forkAt(d *crdt.Doc, h crdt.Heads) (*crdt.Doc, error) {
	if len(h) == 0 {
		return crdt.New("")
	}
	return d.Fork(h)
}

// relayVersion returns the relay's version of the record when it is not
// the base plus incoming (see threeWay): d as of shared with incoming
// imported, or, when that import fails (the base lacking changes the relay
// holds), d as of relay.
func relayVersion(d *crdt.Doc, shared, relay crdt.Heads, incoming []byte) (*crdt.Doc, error) {
	base, err := forkAt(d, shared)
	if err != nil {
		return nil, err
	}
	if _, err := base.Import(incoming); err == nil {
		return base, nil
	}
	base.Free()
	return forkAt(d, relay)
}

// maxResolveRounds bounds how often a record edited while its conflicts
// were being decided is compared again within one sync; past it the
// record stays pending, with the relay's changes kept, for the next sync.
const maxResolveRounds = 4

// errEditedMeanwhile fails a record that kept changing while its
// conflicts were decided.
var errEditedMeanwhile = errors.New("ferry: record kept changing while its conflicts were decided; retried next sync")

// resolveConflicted decides the conflicts of list with res, the policy,
// outside every lock, and stores the decisions (see the top of this file).
// It frees the merged documents of list it does not store.
func (r *Replica) resolveConflicted(ctx context.Context, coll string, list []conflicted, res policy.Resolver) (batchResult, error) {
	var out batchResult
	// The merged documents the entries still own when it returns.
	defer func() { freeMerged(list) }()
	for round := 1; len(list) > 0; round++ {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		decisions := make([][]policy.Decision, len(list))
		hookErrs := make([]error, len(list))
		for i, c := range list {
			decisions[i], hookErrs[i] = ask(coll, c, res)
		}
		var again []remoteRec
		ids := make([]string, len(list))
		for i, c := range list {
			ids[i] = c.rec.id
		}
		err := r.batchIntoRedoing(&out, coll, ids, &again, func(i int, txn *badger.Txn, t *touched) (bool, error) {
			c := &list[i]
			if !t.new.heads.Equal(c.local) {
				// Edited while the policy decided: compare again.
				if round == maxResolveRounds {
					out.failed = append(out.failed, failedRecord(c.rec.id, errEditedMeanwhile))
					return false, writeQuarantine(txn, coll, c.rec.id, c.data, c.relay)
				}
				again = append(again, c.rec)
				return false, nil
			}
			if err := hookErrs[i]; err != nil {
				// The hook failed: keep the record as it was, and the
				// relay's changes for the next sync.
				r.log.Warn("merge hook failed; record kept pending", "collection", coll, "record", c.rec.id, "err", err)
				out.failed = append(out.failed, failedRecord(c.rec.id, err))
				return false, writeQuarantine(txn, coll, c.rec.id, c.data, c.relay)
			}
			return true, r.storeResolution(txn, t, c, decisions[i], &out)
		})
		freeMerged(list)
		if err != nil {
			return out, err
		}
		if len(again) == 0 {
			break
		}
		res2, err := r.applyHolding(coll, again, r.mergeOp, true, nil)
		list = res2.conflicted
		res2.conflicted = nil
		out.add(res2)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// ask returns the policy's decision for each of c's conflicts. The
// resolver is the app's code: no lock is held.
func ask(coll string, c conflicted, res policy.Resolver) ([]policy.Decision, error) {
	out := make([]policy.Decision, len(c.conflicts))
	for i, cf := range c.conflicts {
		pc := &policy.Conflict{
			Collection: coll, Record: c.rec.id, Path: cf.Path,
			Base: cf.Base, Local: cf.Local, Remote: cf.Remote,
			BaseSet: cf.BaseSet, LocalSet: cf.LocalSet, RemoteSet: cf.RemoteSet,
			LocalRecord: c.localRec, RemoteRecord: c.remoteRec,
		}
		dec, err := res.Resolve(pc)
		if err != nil {
			return nil, fmt.Errorf("%w: %s %v: %w", ErrMergeHook, c.rec.id, cf.Path, err)
		}
		out[i] = dec
	}
	return out, nil
}

// storeResolution makes c's merged document the record's (or imports c's
// changes into the record if there is none), writes the decisions as one
// change that follows both sides, and stores the record, marked so that
// only a sync holding the lease pushes the resolution.
func (r *Replica) storeResolution(txn *badger.Txn, t *touched, c *conflicted, decisions []policy.Decision, out *batchResult) error {
	if c.merged != nil {
		// The record is as c.merged was copied from (the caller checked
		// its heads), so the copy holds it and c.data.
		r.replaceDoc(t, c.merged)
		c.merged = nil
	} else if _, err := t.doc.Import(c.data); err != nil {
		return err
	}
	d := t.doc
	for i, cf := range c.conflicts {
		if err := decide(d, cf, decisions[i]); err != nil {
			return fmt.Errorf("ferry: writing the resolution of %s %v: %w", c.rec.id, cf.Path, err)
		}
	}
	made, err := d.Commit("ferry: conflict resolution", r.opts.Clock())
	if err != nil {
		return err
	}
	out.conflicts += len(c.conflicts)
	if err := deleteIfPresent(txn, recKey('q', t.coll, t.id)); err != nil {
		return err
	}
	if made {
		if err := txn.Set(recKey('l', t.coll, t.id), nil); err != nil {
			return err
		}
	}
	return r.storeSynced(txn, t, c.relay, nil)
}

// decide writes a decision into the merged document. A value equal to what
// the merge already shows writes nothing: Automerge picks the same winner
// on every replica, so they agree already. Values keep their kind: a Text
// decided for a field the merge lacks is written as collaborative text.
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
		return d.Delete(c.Path)
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
			if err := d.Delete(crdt.Path{k}); err != nil {
				return err
			}
		}
	}
	return d.Put(fields)
}
