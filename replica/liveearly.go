package replica

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// A live session pushes a local edit while the edit's fsync runs, rather
// than after it: commit hands the session what the edit has to push once
// its transaction has committed and before it fsyncs (early pushes), and
// the app's call still returns, and its feeds still hear of the edit, only
// once the fsync is done. So the relay may hold an edit before it is
// durable on the device. Nothing is lost by that, and nothing is
// confused:
//
//   - If the device loses the edit (a power cut before the fsync), its
//     call never returned. The relay's copy comes back to it on its next
//     pull: its cursor was written after the edit, so it was lost with it
//     (Badger's logs survive as a prefix; see durable.go). The device does
//     not write another change under the same actor and sequence number,
//     since each open of a store writes as a new actor (newActor).
//   - If the fsync fails, the call returns its error although the relay
//     may hold the edit; Collection.Update says so.
//   - The relay's acknowledgement is recorded (acknowledge) under the
//     record's lock, which commit holds until its fsync is done, so no
//     record is marked as held by the relay before its edit is durable
//     here. Waiting for that lock, which a later edit's commit may hold
//     through its own fsync, would stop the session pushing that edit: so
//     an ackWriter goroutine records early pushes' acknowledgements, in
//     order, and the session waits for it (settle) only before what reads
//     the relay's heads of a record (an ordinary push, a merge). Early
//     pushes are pipelined (earlyFlight): the session sends the next one
//     without waiting for the relay's answer to the last.
//   - An acknowledgement is recorded only if the relay's heads recorded
//     for the record are still those the early push built on, or those of
//     the record's last early push from this session (outgoing.prev),
//     which the new one's build on: an older push's acknowledgement,
//     recorded after a newer one's, must not set the heads back.
//   - The session remembers each record's last early pushes (pushed), so
//     that the edit's feed event does not push it again, and so that the
//     relay sending the device its own edits back, however far behind the
//     session applies them, does not make it apply them again, which
//     would wait for the record's lock (notHeld).
//
// An early push is a shortcut, never the only way: the record stays
// pending until the relay's acknowledgement is recorded. An early push
// that is dropped (the session's queue is full) or skipped (a record held
// back, or too large for one push) goes the ordinary way, from the edit's
// feed event; one whose acknowledgement is not recorded (the heads moved
// meanwhile) is pushed again at the next push of the collection, and the
// relay acknowledges changes it holds without storing them again.

// noEarlyPush turns early pushes off, for benchmarks that compare.
var noEarlyPush bool

// earlyApply makes live sessions ask the relay for early live messages
// (below). Off by default: it does not shorten W2's median, even with
// early pushes pipelined (earlyFlight): the relay fans a push out early
// only once its group starts to be written, after the groups ahead of it
// are durable (docs/benchmarks.md, "W2's live path traced", "Pipelined
// pushes"). The tail it once had (a session merging its own pushes as
// they came back) is gone (pushedHeads, notPending). Tests turn it on.
var earlyApply bool

// earlyEdit is one committed unit of work's records of one collection, as
// they are to be pushed.
type earlyEdit struct {
	coll string
	recs []outgoing
}

// earlyPushes are the live sessions that push local edits early, by the
// collections they push.
type earlyPushes struct {
	mu sync.Mutex
	by map[string]map[*earlyQueue]struct{}
}

// earlyQueue is one live session's: commit sends to c and never waits.
type earlyQueue struct {
	c chan earlyEdit
}

// earlyQueueLen is how many committed units of work a live session's
// early queue holds; past it, edits go the ordinary way.
const earlyQueueLen = 256

// add registers q for the collections colls and returns a function that
// removes it.
func (e *earlyPushes) add(q *earlyQueue, colls []string) (remove func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.by == nil {
		e.by = map[string]map[*earlyQueue]struct{}{}
	}
	for _, c := range colls {
		if e.by[c] == nil {
			e.by[c] = map[*earlyQueue]struct{}{}
		}
		e.by[c][q] = struct{}{}
	}
	return func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, c := range colls {
			delete(e.by[c], q)
			if len(e.by[c]) == 0 {
				delete(e.by, c)
			}
		}
	}
}

// wants says whether a live session pushes coll early.
func (e *earlyPushes) wants(coll string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.by[coll]) > 0
}

// send hands edits to the sessions that push their collections, dropping
// what a full queue cannot take.
func (e *earlyPushes) send(edits []earlyEdit) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ed := range edits {
		for q := range e.by[ed.coll] {
			select {
			case q.c <- ed:
			default:
			}
		}
	}
}

// earlyOutgoing returns what a record committed by a local edit in txn
// has to push, as outgoing would read it once the edit is durable, or
// false if the record must go the ordinary way: held back (a failed merge
// hook's changes, or a conflict resolution, which needs the lease), or
// built on heads the document does not know.
func earlyOutgoing(txn *badger.Txn, t *touched) (outgoing, bool, error) {
	for _, prefix := range []byte{'q', 'l'} {
		if _, held, err := getKey(txn, recKey(prefix, t.coll, t.id)); err != nil || held {
			return outgoing{}, false, err
		}
	}
	acked, err := readAcked(txn, t.coll, t.id)
	if err != nil {
		return outgoing{}, false, err
	}
	changes, err := t.doc.ChangesSince(acked)
	if errors.Is(err, crdt.ErrUnknownHeads) {
		return outgoing{}, false, nil
	}
	if err != nil || len(changes) == 0 {
		return outgoing{}, false, err
	}
	return outgoing{id: t.id, changes: changes, heads: t.new.heads, base: acked, known: len(acked) > 0, deleted: t.new.deleted, early: true}, true, nil
}

// earlyEdits returns what the records of a local unit of work committed
// in txn have to push early, by collection, for the collections a live
// session pushes early.
func (r *Replica) earlyEdits(txn *badger.Txn, order []*touched) ([]earlyEdit, error) {
	var out []earlyEdit
	wanted := map[string]int{} // collection → index in out, or -1
	for _, t := range order {
		i, ok := wanted[t.coll]
		if !ok {
			i = -1
			if r.early.wants(t.coll) {
				i = len(out)
				out = append(out, earlyEdit{coll: t.coll})
			}
			wanted[t.coll] = i
		}
		if i < 0 || t.new.heads.Equal(t.old.heads) {
			continue
		}
		o, ok, err := earlyOutgoing(txn, t)
		if err != nil {
			return nil, err
		}
		if ok {
			out[i].recs = append(out[i].recs, o)
		}
	}
	return slices.DeleteFunc(out, func(e earlyEdit) bool { return len(e.recs) == 0 }), nil
}

// drainEarly pushes the early edits waiting in the session's queue. edits
// may be nil: nothing to drain.
func (r *Replica) drainEarly(ctx context.Context, conn *relayConn, p *Profile, rt *liveRetry, edits *localEdits) error {
	if edits == nil {
		return nil
	}
	for {
		select {
		case ed := <-edits.early.c:
			if err := r.pushEarly(ctx, conn, p, rt, edits, ed, false); err != nil {
				return err
			}
		default:
			// What reads the relay's heads of a record (a push, a merge)
			// needs the early pushes answered and their acknowledgements
			// recorded first.
			return edits.settle(ctx)
		}
	}
}

// ackWriter records the relay's acknowledgements of a live session's
// early pushes, in order, on a goroutine of its own: recording one waits
// for the record's lock, which the edit's commit holds until its fsync is
// done, or a later edit's commit holds through its own fsync. The session
// meanwhile goes on pushing.
type ackWriter struct {
	r    *Replica
	jobs chan ackJob
	done chan struct{}
	// again receives the records whose acknowledgement was not recorded
	// (see acknowledgeEarly), for the session to push the ordinary way.
	again chan struct{}

	mu      sync.Mutex
	skipped map[string][]string // by collection, not yet on again

	// queued counts the acknowledgements added and not yet recorded, so
	// that flush, on the live path before every merge of a live message,
	// costs no goroutine hop when there are none.
	queued atomic.Int64
}

type ackJob struct {
	coll    string
	batch   []outgoing
	flushed chan struct{} // closed once the jobs before it are done
}

func newAckWriter(r *Replica) *ackWriter {
	w := &ackWriter{r: r, jobs: make(chan ackJob, earlyQueueLen), done: make(chan struct{}), again: make(chan struct{}, 1), skipped: map[string][]string{}}
	go w.run()
	return w
}

func (w *ackWriter) run() {
	defer close(w.done)
	for j := range w.jobs {
		if j.flushed != nil {
			close(j.flushed)
			continue
		}
		skipped, err := w.r.acknowledgeEarly(j.coll, j.batch, false)
		w.queued.Add(-1)
		if err != nil {
			// The records stay pending. A live session pushes only what
			// is edited, so they go to the session as skipped, to be
			// pushed (and acknowledged) again the ordinary way.
			w.r.log.Warn("recording the relay's acknowledgement of an early push failed", "collection", j.coll, "err", err)
			skipped = skipped[:0]
			for _, o := range j.batch {
				skipped = append(skipped, o.id)
			}
		}
		if len(skipped) > 0 {
			w.mu.Lock()
			w.skipped[j.coll] = append(w.skipped[j.coll], skipped...)
			w.mu.Unlock()
			select {
			case w.again <- struct{}{}: // the session takes skipped
			default:
			}
		}
	}
}

// takeSkipped returns the records whose acknowledgement was not recorded
// since the last call, by collection.
func (w *ackWriter) takeSkipped() map[string][]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.skipped
	w.skipped = map[string][]string{}
	return out
}

// add queues the acknowledgement of batch.
func (w *ackWriter) add(ctx context.Context, coll string, batch []outgoing) error {
	w.queued.Add(1)
	select {
	case w.jobs <- ackJob{coll: coll, batch: batch}:
		return nil
	case <-ctx.Done():
		w.queued.Add(-1)
		return ctx.Err()
	}
}

// flush returns once every acknowledgement queued before is recorded. The
// session's goroutine alone flushes; the goroutines of its pipelined
// pushes add, in order (earlyFlight), and settle waits for them before
// it flushes.
func (w *ackWriter) flush(ctx context.Context) error {
	if w.queued.Load() == 0 {
		return nil
	}
	f := make(chan struct{})
	select {
	case w.jobs <- ackJob{flushed: f}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-f:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close waits for the acknowledgements queued, then stops the writer.
func (w *ackWriter) close() {
	close(w.jobs)
	<-w.done
}

// pushEarly pushes an early edit, with those waiting behind it if more,
// one push per collection, as they were committed: the records' changes
// since the heads the relay held then. A record no longer pending was
// pushed meanwhile; one too large for one push goes the ordinary way, in
// pieces.
func (r *Replica) pushEarly(ctx context.Context, conn *relayConn, p *Profile, rt *liveRetry, edits *localEdits, ed earlyEdit, more bool) error {
	byColl := map[string][]outgoing{ed.coll: ed.recs}
	order := []string{ed.coll}
	for more {
		select {
		case e := <-edits.early.c:
			if _, ok := byColl[e.coll]; !ok {
				order = append(order, e.coll)
			}
			byColl[e.coll] = append(byColl[e.coll], e.recs...)
		default:
			more = false
		}
	}
	for _, coll := range order {
		recs := byColl[coll]
		for i, o := range recs {
			recs[i].prev = edits.pushed[earlyKey(coll, o.id)].last()
		}
		sent, err := r.pushEarlyColl(ctx, conn, p, rt, edits, coll, recs)
		if err != nil {
			return err
		}
		// Remembered as sent, before the relay answers: the next early
		// push of the record builds on this one (outgoing.prev), and the
		// edit's feed event must not push it again (notPushed).
		if len(edits.pushed) > earlyRemembered {
			clear(edits.pushed)
		}
		for _, o := range sent {
			k := earlyKey(coll, o.id)
			edits.pushed[k] = edits.pushed[k].add(o.heads)
		}
	}
	return nil
}

// earlyRemembered bounds how many records' last early pushes a session
// remembers; past it, it forgets them all, which costs only pushes
// acknowledged again the ordinary way.
const earlyRemembered = 4096

func earlyKey(coll, id string) string { return coll + "\x00" + id }

// pushedHeads are the heads of a record's last early pushes the relay
// answered, oldest first. The relay sends each of them back, in order, to
// the session's subscription; when the session falls behind in applying
// them (a burst of edits, a pause), the heads they carry are older than
// the last push's, and without the earlier ones remembered each would go
// through a merge, which waits for the record's lock while later edits
// fsync: the session, which also pushes, would fall further behind.
type pushedHeads []crdt.Heads

// earlyEchoes is how many of a record's early pushes a session
// remembers; a message older than those takes the merge, which is only
// slower.
const earlyEchoes = 32

func (p pushedHeads) last() crdt.Heads {
	if len(p) == 0 {
		return nil
	}
	return p[len(p)-1]
}

// has says whether h are the heads of one of the pushes.
func (p pushedHeads) has(h crdt.Heads) bool {
	return slices.ContainsFunc(p, h.Equal)
}

// add returns p with h as the last push.
func (p pushedHeads) add(h crdt.Heads) pushedHeads {
	if len(p) >= earlyEchoes {
		p = append(p[:0], p[len(p)-earlyEchoes+1:]...)
	}
	return append(p, h)
}

// pushEarlyColl sends early edits of one collection, in pushes within
// the relay's limits, without waiting for the relay's answers (see
// earlyFlight), and returns what it sent.
func (r *Replica) pushEarlyColl(ctx context.Context, conn *relayConn, p *Profile, rt *liveRetry, edits *localEdits, coll string, recs []outgoing) (sent []outgoing, err error) {
	unlock, err := r.colls.lock(ctx, coll)
	if err != nil {
		return nil, err
	}
	defer unlock()
	ids := make([]string, len(recs))
	for i, o := range recs {
		ids[i] = o.id
	}
	pending, err := r.pendingAmong(coll, ids)
	if err != nil {
		return nil, err
	}
	limits := conn.welcome.Limits.WithDefaults()
	budget := limits.MaxFrame - transport.FrameOverhead
	maxData := min(limits.MaxRecord, budget)
	var batch []outgoing
	size := 0
	for _, o := range recs {
		if !slices.Contains(pending, o.id) || len(o.changes) > maxData {
			continue // pushed meanwhile, or goes the ordinary way, in pieces
		}
		if len(batch) == limits.MaxBatch || size+len(o.changes) > budget {
			if err := edits.flight.start(ctx, r, conn, p, rt, edits, coll, batch); err != nil {
				return sent, err
			}
			batch, size = nil, 0
		}
		batch = append(batch, o)
		size += len(o.changes)
		sent = append(sent, o)
	}
	if len(batch) > 0 {
		err = edits.flight.start(ctx, r, conn, p, rt, edits, coll, batch)
	}
	return sent, err
}

// earlyFlight is a live session's early pushes sent and not yet answered
// (pipelined pushes). The relay answers a connection's pushes in the order
// sent, and applies them in that order (docs/protocol.md), so the session
// sends the next early push without waiting for the last one's answer: an
// edit made while the relay makes the last one durable is not held up by
// that fsync. Each push's answer is handled on a goroutine of its own, in
// the order sent: its acknowledgement is queued for the ackWriter only
// once the push before it is done with, so acknowledgements are recorded
// in order. A refused push (or one the relay was busy for) is pushed again
// there the ordinary way (pushBatch), once the one before it is done.
// What reads the relay's heads of a record waits for all of them
// (localEdits.settle). The session takes each push's statistics
// (results) on its own goroutine, for liveRetry.
type earlyFlight struct {
	last    chan struct{} // closed once the last push sent is done with
	results chan flightResult
	n       int // pushes sent whose result the session has not taken
}

// maxEarlyInFlight bounds a live session's early pushes in flight; past
// it, the session waits for the oldest one's answer.
const maxEarlyInFlight = 8

type flightResult struct {
	s   *collSync
	n   int // records acknowledged
	err error
}

func newEarlyFlight() *earlyFlight {
	last := make(chan struct{})
	close(last)
	return &earlyFlight{last: last, results: make(chan flightResult, maxEarlyInFlight)}
}

// start sends one early push of batch, records of coll, and leaves its
// answer to a goroutine. Only the session's goroutine calls it.
func (f *earlyFlight) start(ctx context.Context, r *Replica, conn *relayConn, p *Profile, rt *liveRetry, edits *localEdits, coll string, batch []outgoing) error {
	for f.n >= maxEarlyInFlight {
		select {
		case res := <-f.results:
			if err := f.handle(res, rt); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	acks := edits.acks
	s := &collSync{r: r, conn: conn, p: p, coll: coll, cs: &CollectionStats{Collection: coll, Type: p.Type, Start: r.opts.Clock()}, ack: func(coll string, batch []outgoing, _ bool) error {
		return acks.add(ctx, coll, batch)
	}}
	req := &transport.Push{Collection: coll}
	for _, o := range batch {
		req.Records = append(req.Records, transport.RecordChanges{Record: o.id, Data: o.changes, Heads: o.heads.Slices()})
	}
	var pend *transport.Pending
	var sendErr error
	if fault := r.pushFault; fault != nil {
		sendErr = fault(req)
	}
	if sendErr == nil {
		pend, sendErr = conn.client.Start(ctx, req)
	}
	prev, done := f.last, make(chan struct{})
	f.last = done
	f.n++
	edits.wg.Add(1)
	go func() {
		defer edits.wg.Done()
		defer close(done)
		err := sendErr
		if err == nil {
			var ack transport.Ack
			wctx, cancel := context.WithTimeout(ctx, p.timeout())
			err = pend.Wait(wctx, &ack)
			cancel()
		}
		select {
		case <-prev:
		case <-ctx.Done():
			f.results <- flightResult{s: s, err: ctx.Err()}
			return
		}
		res := flightResult{s: s}
		var perr *transport.Error
		switch {
		case err == nil:
			res.n, res.err = s.acknowledged(batch)
		case errors.As(err, &perr) && (perr.Code == transport.CodeBusy || perr.Code == transport.CodeTokenExpired):
			// Not taken: sent again as any push is, once the relay has
			// room or the token is renewed.
			res.n, res.err = s.pushBatch(ctx, batch)
		case errors.As(err, &perr):
			// Refused: handled as any push's refusal (pushed again on
			// conflict, split to find the records at fault, ...).
			res.n, res.err = s.pushBatchAnswered(ctx, batch, err)
		default:
			res.err = fmt.Errorf("ferry: push %s: %w", coll, err)
		}
		f.results <- res
	}()
	return nil
}

// handle takes a push's result, on the session's goroutine: a record the
// relay refused is pushed again by rt, after its backoff, as any live push
// the relay refuses.
func (f *earlyFlight) handle(res flightResult, rt *liveRetry) error {
	f.n--
	res.s.cs.End = res.s.r.opts.Clock()
	if res.n > 0 {
		res.s.progress(ToRelay, res.n, res.n)
	}
	rt.pushed(res.s.cs, false)
	return res.err
}

// settle returns once every early push sent is answered and its
// acknowledgement recorded. Their results stay for the session to take.
func (l *localEdits) settle(ctx context.Context) error {
	select {
	case <-l.flight.last:
	case <-ctx.Done():
		return ctx.Err()
	}
	return l.acks.flush(ctx)
}

// With earlyApply, a live session also takes the relay's early live
// messages: each group
// of pushes the relay has checked, sent while the relay makes it durable
// (transport.Changes.Early). Such a message moves no cursor: the same
// changes come again, with their sequence numbers, once durable, and only
// that message moves the cursor, so a cursor never names an entry the
// relay could still lose. What an early message brings is applied at once
// to each record that holds no changes of this device's own that the
// relay lacks: if the relay loses them (a crash before its fsync), their
// pusher had no acknowledgement and pushes them again, and this device,
// which applied them, marks the record pending, so that it pushes them too
// at its next push of the collection; the relay acknowledges what it holds
// without storing it twice. A record with pending changes of its own waits
// for the durable message, which compares both sides field by field, as
// every pull does (merge.go). A record this device edits after applying
// changes early is pending with them: its merges compare from the version
// it shares with the relay (mergeBase), so that once the relay holds those
// changes they count as the relay's, not as edits of this device's that a
// policy could write back over the relay's later edits. Early messages are
// a shortcut, never the only way: one dropped by the session's queue only
// costs time.

// applyEarly applies an early live message.
//
// A record pending with nothing but changes this session applied early
// (its heads are still those they brought it to) takes the next early
// changes too: they are the relay's, as the pending ones are, and the
// durable messages that follow settle both. Without it, a record edited
// live elsewhere took only every other early message (the next one came
// while the durable message of the last was still behind the relay's
// fsync), and waited for the fsync on the others.
func (r *Replica) applyEarly(ctx context.Context, edits *localEdits, coll string, recs []remoteRec) error {
	unlock, err := r.colls.lock(ctx, coll)
	if err != nil {
		return err
	}
	defer unlock()
	if recs, err = r.notHeld(coll, recs, edits.pushed); err != nil || len(recs) == 0 {
		return err
	}
	if recs, err = r.notPending(coll, recs, edits.applied); err != nil || len(recs) == 0 {
		return err
	}
	if len(edits.applied) > maxEarlyApplied {
		clear(edits.applied) // only a shortcut: forgotten records wait for durable messages
	}
	_, err = r.applyBatchThen(coll, recs, func(txn *badger.Txn, t *touched, rec remoteRec, res *batchResult) (bool, error) {
		ok, err := r.earlyOp(txn, t, rec, edits.applied[earlyKey(coll, t.id)])
		if ok && err == nil {
			// Set before the transaction commits: if it fails, the
			// record reloads at its stored heads, which then differ.
			edits.applied[earlyKey(coll, t.id)] = t.doc.Heads()
		}
		return ok, err
	}, nil)
	return err
}

// maxEarlyApplied bounds the records a session remembers applying early
// changes to.
const maxEarlyApplied = 4096

// notPending leaves out of recs the records earlyOp would not apply to:
// pending with changes other than those applied early (applied), or
// holding changes a failed merge hook kept back. Read without
// the records' locks, so earlyOp checks again; but a record this device
// is editing is pending, and its lock is held through each edit's fsync
// (this device's own pushes coming back early, say): waiting for it, the
// session would stop pushing; and a document set aside by earlyOp is
// dropped from the cache, to be loaded from the store at the next use.
func (r *Replica) notPending(coll string, recs []remoteRec, applied map[string]crdt.Heads) ([]remoteRec, error) {
	out := recs[:0:0]
	err := r.view(func(txn *badger.Txn) error {
	next:
		for _, rec := range recs {
			for _, prefix := range []byte{'p', 'q'} {
				if _, held, err := getKey(txn, recKey(prefix, coll, rec.id)); err != nil {
					return err
				} else if held && (prefix == 'q' || applied[earlyKey(coll, rec.id)] == nil) {
					continue next
				}
			}
			out = append(out, rec)
		}
		return nil
	})
	return out, err
}

// earlyOp applies an early message's changes to a record with no pending
// changes, or none but those applied early (it is at heads applied, the
// heads they brought it to), and none a failed merge hook holds back,
// marking it pending: the relay may yet lose them.
func (r *Replica) earlyOp(txn *badger.Txn, t *touched, rec remoteRec, applied crdt.Heads) (bool, error) {
	if _, held, err := getKey(txn, recKey('q', t.coll, t.id)); err != nil || held {
		return false, err
	}
	if _, held, err := getKey(txn, recKey('p', t.coll, t.id)); err != nil || held && (applied == nil || !t.doc.Heads().Equal(applied)) {
		return false, err
	}
	if _, err := t.doc.Import(rec.data); err != nil {
		// Changes this device cannot take yet (it missed what they build
		// on) wait for the durable message, or the pull that catches up.
		r.log.Debug("early changes not applied", "collection", t.coll, "record", t.id, "err", err)
		return false, nil
	}
	nm, err := r.writeRecord(txn, t.coll, t.id, t.doc, t.new, true, nil)
	if err != nil {
		return false, err
	}
	t.new = nm
	return true, nil
}
