package replica

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// runLive keeps a live profile connected until ctx ends: it catches up
// with a sync of each collection, subscribes from the cursors, applies
// remote changes as they arrive, and pushes local edits as they commit.
// A lost connection is retried with exponential backoff and jitter; each
// new session resumes from the stored cursors.
func (r *Replica) runLive(ctx context.Context, p *Profile) {
	b := backoff{min: r.opts.BackoffMin, max: r.opts.BackoffMax}
	for ctx.Err() == nil {
		wake := r.sched.networkWait() // before looking: no change slips between
		if n := r.Network(); !p.Networks.Allows(n) {
			// Wait for an allowed network.
			r.setState(p.Name, StateDeferred, "")
			select {
			case <-ctx.Done():
				return
			case <-wake:
				continue
			}
		}
		start := time.Now()
		err := r.liveSession(ctx, p)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errNetworkGone) {
			continue // wait for an allowed network, above
		}
		if time.Since(start) > b.max {
			b.reset() // it had been up a while: not a crash loop
		}
		d := b.next()
		r.log.Warn("live sync disconnected; reconnecting", "profile", p.Name, "err", err, "in", d)
		r.syncEnded(p.Name, err, r.opts.Clock())
		retry := r.opts.Clock().Add(d)
		r.setStatus(p.Name, func(st *SyncStatus) { st.State, st.Retry = StateBackingOff, retry })
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

// backoff doubles a delay from min to max, with jitter so many devices
// do not reconnect in step.
type backoff struct {
	min, max time.Duration
	n        int
}

func (b *backoff) next() time.Duration {
	d := b.min << min(b.n, 30)
	if d <= 0 || d > b.max {
		d = b.max
	}
	b.n++
	// Full jitter over the upper half keeps the delay at least d/2.
	return d/2 + rand.N(d/2+1)
}

func (b *backoff) reset() { b.n = 0 }

// errNetworkGone ends a live session when the device moves to a network
// its profile may not use (or to none).
var errNetworkGone = errors.New("ferry: left the networks the profile may use")

// liveSession runs one live connection until it fails, ctx ends, or the
// device moves to a network the profile may not use.
func (r *Replica) liveSession(ctx context.Context, p *Profile) error {
	conn, err := r.catchUp(ctx, p)
	if err != nil {
		return err
	}
	defer conn.close()
	// The goroutines forwarding local edits end with the session.
	ctx, cancel := context.WithCancel(ctx)
	edits := &localEdits{r: r, ctx: ctx, feeds: map[string]*Feed{}, c: make(chan Event, 1024), early: &earlyQueue{c: make(chan earlyEdit, earlyQueueLen)}, pushed: map[string]pushedHeads{}, acks: newAckWriter(r), flight: newEarlyFlight(), applied: map[string]crdt.Heads{}}
	defer func() {
		cancel()
		edits.close()
	}()
	// Live messages are drained from the start, so that none waits in
	// the client while the session pushes or syncs (see livequeue.go).
	q := newLiveQueue(conn.client)
	defer q.close()
	rt := &liveRetry{r: r, p: p, b: backoff{min: r.opts.BackoffMin, max: r.opts.BackoffMax}, colls: map[string]bool{}}
	defer rt.stop()
	if err := r.subscribe(ctx, conn, p, edits); err != nil {
		return err
	}
	presDone := make(chan struct{})
	go func() {
		defer close(presDone)
		r.runPresence(ctx, conn, p)
	}()
	defer func() { cancel(); <-presDone }()
	// The device may change networks (SetNetwork): stay only on an
	// allowed one.
	netWake := r.sched.networkWait()
	// The caught-up sync ends before the state says live, so a status that
	// reads live also has its LastSync.
	r.syncEnded(p.Name, nil, r.opts.Clock())
	r.setState(p.Name, StateLive, "")
	// Anything edited between the catch-up and the feeds starting (after
	// the state says live, so that a refusal stays in LastError).
	for coll := range edits.feeds {
		if err := r.pushNow(ctx, conn, p, rt, edits, coll, nil); err != nil {
			return err
		}
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-netWake:
			netWake = r.sched.networkWait()
			if n := r.Network(); !p.Networks.Allows(n) {
				return fmt.Errorf("%w: now on %q", errNetworkGone, n)
			}
		case <-conn.client.Done():
			return conn.client.Err()
		case <-q.ready:
			behind, msgs := q.take()
			for _, coll := range behind {
				// Messages for it were dropped: pull from its cursor.
				r.log.Warn("live messages arrived faster than they were applied; syncing the collection", "profile", p.Name, "collection", coll)
				if err := r.leasedSync(ctx, conn, p, rt, edits, coll); err != nil {
					return err
				}
			}
			for _, lv := range msgs {
				if err := r.applyLive(ctx, conn, p, rt, edits, lv); err != nil {
					return err
				}
			}
		case ed := <-edits.early.c:
			if err := r.pushEarly(ctx, conn, p, rt, edits, ed, true); err != nil {
				return err
			}
		case res := <-edits.flight.results:
			if err := edits.flight.handle(res, rt); err != nil {
				return err
			}
		case <-edits.acks.again:
			for coll, ids := range edits.acks.takeSkipped() {
				if err := r.pushNow(ctx, conn, p, rt, edits, coll, ids); err != nil {
					return err
				}
			}
		case ev := <-edits.c:
			if ev.Origin != Local {
				continue
			}
			// An edit's early push is queued before its event, but the
			// select may take the event first: the push goes first, so
			// that notPushed knows it and the edit is not pushed again
			// the ordinary way (whose acknowledgement waits for the
			// record's lock, and whose changes, coming back, are merged).
			select {
			case ed := <-edits.early.c:
				if err := r.pushEarly(ctx, conn, p, rt, edits, ed, true); err != nil {
					return err
				}
			default:
			}
			for coll, list := range edits.notPushed(coalesce(ev, edits.c)) {
				if err := r.pushNow(ctx, conn, p, rt, edits, coll, list); err != nil {
					return err
				}
			}
		case <-rt.timer():
			if err := r.drainEarly(ctx, conn, p, rt, edits); err != nil {
				return err
			}
			if err := rt.retry(ctx, conn); err != nil {
				return err
			}
		}
		if err := r.pushOverflowed(ctx, conn, p, rt, edits); err != nil {
			return err
		}
	}
}

// catchUp connects a live profile and syncs each of its collections: it
// pushes what waited offline and pulls what was missed. It holds the
// profile's lock meanwhile, as any sync does. A record that fails (the
// relay refused it, say) fails the catch-up: the session backs off and
// connects again, with the error in the status.
func (r *Replica) catchUp(ctx context.Context, p *Profile) (*relayConn, error) {
	unlock := r.sched.lockProfile(p.Name)
	defer unlock()
	r.setState(p.Name, StateConnecting, "")
	conn, err := r.dial(ctx, p, true)
	if err != nil {
		return nil, err
	}
	for _, coll := range p.Collections {
		if _, err := r.syncCollection(ctx, conn, p, coll); err != nil {
			conn.close()
			return nil, fmt.Errorf("catching up %s: %w", coll, err)
		}
	}
	return conn, nil
}

// subscribe asks the relay for the changes of each collection the profile
// pulls, from its cursor on, and watches the local edits of each it
// pushes.
func (r *Replica) subscribe(ctx context.Context, conn *relayConn, p *Profile, edits *localEdits) error {
	var pushed []string
	for _, coll := range p.Collections {
		if p.Type.Pulls() {
			st, err := r.loadSyncState(p.Name, coll)
			if err != nil {
				return err
			}
			if err := conn.call(ctx, &transport.Subscribe{Collection: coll, Cursor: st.Cursor, Early: earlyApply}, &transport.OK{}); err != nil {
				return fmt.Errorf("subscribe %s: %w", coll, err)
			}
		}
		if p.Type.Pushes() {
			edits.watch(coll)
			pushed = append(pushed, coll)
		}
	}
	if !noEarlyPush {
		edits.unregister = r.early.add(edits.early, pushed)
	}
	return nil
}

// pushOverflowed watches again each collection whose feed overflowed and
// pushes everything pending in it, as the dropped events are unknown.
func (r *Replica) pushOverflowed(ctx context.Context, conn *relayConn, p *Profile, rt *liveRetry, edits *localEdits) error {
	for coll, f := range edits.feeds {
		if err := f.Err(); errors.Is(err, ErrFeedOverflow) {
			edits.watch(coll)
			if err := r.pushNow(ctx, conn, p, rt, edits, coll, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// coalesce gathers, by collection, the IDs of ev and of the local edits
// already waiting in c, so a burst of edits goes out in one push per
// collection.
func coalesce(ev Event, c <-chan Event) map[string][]Event {
	evs := map[string][]Event{ev.Collection: {ev}}
	for {
		select {
		case ev := <-c:
			if ev.Origin == Local {
				evs[ev.Collection] = append(evs[ev.Collection], ev)
			}
		default:
			return evs
		}
	}
}

// notPushed returns the IDs of the records of evs, by collection, but for
// those an early push took to the relay as the event has them: the relay
// acknowledged them already, or refused them, and rt pushes them again
// (see liveearly.go). Pushing those again would
// first wait for their acknowledgements to be recorded, which wait for
// the record's lock, which a later edit may hold through its fsync.
func (l *localEdits) notPushed(evs map[string][]Event) map[string][]string {
	out := map[string][]string{}
	for coll, list := range evs {
		for _, ev := range list {
			if l.pushed[earlyKey(coll, ev.ID)].has(ev.Heads) {
				continue
			}
			out[coll] = append(out[coll], ev.ID)
		}
	}
	return out
}

// localEdits forwards the events of the collections a live session pushes
// into one channel, c, with a goroutine per feed that ends with ctx or its
// feed. Its methods run on the session's goroutine.
type localEdits struct {
	r     *Replica
	ctx   context.Context
	wg    sync.WaitGroup
	feeds map[string]*Feed
	c     chan Event
	// early receives the edits of the collections pushed, as they
	// commit, before their fsync (see liveearly.go); unregister stops it.
	early      *earlyQueue
	unregister func()
	// pushed holds the heads of each record's last early pushes the
	// relay answered (see outgoing.prev, pushedHeads): this device's own
	// commits, whose changes it holds. acks records the relay's
	// acknowledgements.
	pushed map[string]pushedHeads
	acks   *ackWriter
	// flight is the early pushes sent and not yet answered.
	flight *earlyFlight
	// applied holds, for each record this session applied early changes
	// to, the heads they brought it to (see applyEarly); only the
	// session's goroutine uses it.
	applied map[string]crdt.Heads
}

// watch starts (or restarts) forwarding a collection's events.
func (l *localEdits) watch(coll string) {
	f := (&Collection{r: l.r, name: coll}).Watch(1024)
	l.feeds[coll] = f
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		forwardLocal(l.ctx, f, l.c)
	}()
}

// close stops the feeds and waits for the goroutines forwarding them; the
// session's ctx is cancelled first, so none waits to send.
func (l *localEdits) close() {
	if l.unregister != nil {
		l.unregister()
	}
	for _, f := range l.feeds {
		f.Close()
	}
	l.wg.Wait() // the forwarders, and the early pushes in flight
	l.acks.close()
}

func forwardLocal(ctx context.Context, f *Feed, out chan<- Event) {
	for ev := range f.C {
		select {
		case out <- ev:
		case <-ctx.Done():
			return
		}
	}
}

// pushNow pushes pending records of a collection without a lease: plain
// edits need none (see docs/conflicts.md). ids nil means every pending one.
// A record holding a conflict resolution is pushed by a leased sync of the
// collection instead (leasedSync). Records the relay refuses are reported
// to rt, which pushes them again later.
func (r *Replica) pushNow(ctx context.Context, conn *relayConn, p *Profile, rt *liveRetry, edits *localEdits, coll string, ids []string) error {
	// Early pushes of edits committed before this push reads the records
	// go first, so none is acknowledged after what this one pushes.
	if err := r.drainEarly(ctx, conn, p, rt, edits); err != nil {
		return err
	}
	cs, held, err := r.pushUnleased(ctx, conn, p, coll, ids)
	if err != nil {
		return err
	}
	if !held {
		rt.pushed(cs, ids == nil)
		return nil
	}
	if len(cs.Failed) > 0 {
		rt.pushed(cs, false)
	}
	return r.leasedSync(ctx, conn, p, rt, edits, coll)
}

func (r *Replica) pushUnleased(ctx context.Context, conn *relayConn, p *Profile, coll string, ids []string) (cs *CollectionStats, heldResolutions bool, err error) {
	cs = &CollectionStats{Collection: coll, Type: p.Type, Start: r.opts.Clock()}
	unlock, err := r.colls.lock(ctx, coll)
	if err != nil {
		return cs, false, err
	}
	defer unlock()
	s := &collSync{r: r, conn: conn, p: p, coll: coll, cs: cs}
	err = s.push(ctx, ids)
	cs.End = r.opts.Clock()
	return cs, s.heldResolutions, err
}

// leasedSync syncs one collection of a live profile under its lease: it
// pulls again, lets the policy decide the conflicts, and pushes the
// resolutions under the lease's fence. It pushes every pending record of
// the collection, so it also settles what rt waits to push again.
func (r *Replica) leasedSync(ctx context.Context, conn *relayConn, p *Profile, rt *liveRetry, edits *localEdits, coll string) error {
	if err := r.drainEarly(ctx, conn, p, rt, edits); err != nil {
		return err
	}
	unlock := r.sched.lockProfile(p.Name)
	defer unlock()
	cs, err := r.syncCollection(ctx, conn, p, coll)
	if err != nil {
		return err // the session ends, and its status says why
	}
	rt.pushed(cs, true)
	// The sync was a step of the live session, which goes on.
	r.setState(p.Name, StateLive, "")
	return nil
}

// applyLive applies a live message. Records without conflicting local
// changes are applied at once. If a record's local changes conflict with
// the relay's, nothing of the message moves the cursor: the collection
// syncs under its lease, which pulls again from the cursor, lets the policy
// decide, and pushes the resolution under the fence.
func (r *Replica) applyLive(ctx context.Context, conn *relayConn, p *Profile, rt *liveRetry, edits *localEdits, lv *transport.Live) error {
	coll := lv.Collection
	recs := make([]remoteRec, 0, len(lv.Records))
	for _, rc := range lv.Records {
		heads, err := crdt.HeadsFromSlices(rc.Heads)
		if err != nil {
			return err
		}
		recs = append(recs, remoteRec{id: rc.Record, data: rc.Data, relay: heads})
	}
	if lv.Early {
		return r.applyEarly(ctx, edits, coll, recs)
	}
	conflict, err := r.applyLiveLocked(ctx, p, edits, coll, recs, lv.Next)
	if err != nil || !conflict {
		return err
	}
	return r.leasedSync(ctx, conn, p, rt, edits, coll)
}

// applyLiveLocked applies the records and moves the cursor to next in one
// store transaction (edits, the live session's, may be nil), so a crash keeps both or neither; it is not fsynced
// (see durable.go). A conflict leaves the cursor where it was.
func (r *Replica) applyLiveLocked(ctx context.Context, p *Profile, edits *localEdits, coll string, recs []remoteRec, next uint64) (conflict bool, err error) {
	unlock, err := r.colls.lock(ctx, coll)
	if err != nil {
		return false, err
	}
	defer unlock()
	var pushed map[string]pushedHeads
	if edits != nil {
		pushed = edits.pushed
	}
	if recs, err = r.notHeld(coll, recs, pushed); err != nil {
		return false, err
	}
	if len(recs) == 0 {
		return false, r.update(func(txn *badger.Txn) error { return advanceCursor(txn, p.Name, coll, next) })
	}
	if edits != nil {
		// The merge reads the relay's heads of the records: the early
		// pushes sent before are answered, and their acknowledgements
		// recorded, first.
		if err := edits.settle(ctx); err != nil {
			return false, err
		}
	}
	res, err := r.applyBatchThen(coll, recs, r.mergeOp, func(txn *badger.Txn, res *batchResult) error {
		if len(res.conflicted) > 0 {
			return nil
		}
		return advanceCursor(txn, p.Name, coll, next)
	})
	return len(res.conflicted) > 0, err
}

// notHeld leaves out of recs the records whose heads this device is
// known to hold already, as the relay's heads it recorded or an early
// push's (pushed): its own pushes, sent back to it by its subscription. Applying them would change nothing, and would wait for
// the record's lock, which a local edit holds through its fsync: the
// session would stop pushing while it waits (see liveearly.go). A record
// holding changes a failed merge hook kept back goes through the merge
// either way. The caller holds the collection's lock, under which the
// relay's heads of a record change.
func (r *Replica) notHeld(coll string, recs []remoteRec, pushed map[string]pushedHeads) ([]remoteRec, error) {
	out := recs[:0:0]
	err := r.view(func(txn *badger.Txn) error {
		for _, rec := range recs {
			acked, err := readAcked(txn, coll, rec.id)
			if err != nil {
				return err
			}
			if len(rec.relay) > 0 && (acked.Equal(rec.relay) || pushed[earlyKey(coll, rec.id)].has(rec.relay)) {
				_, held, err := getKey(txn, recKey('q', coll, rec.id))
				if err != nil {
					return err
				}
				if !held {
					continue
				}
			}
			out = append(out, rec)
		}
		return nil
	})
	return out, err
}
