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
	unlock := r.sched.lockProfile(p.Name)
	r.setState(p.Name, StateConnecting, "")
	conn, err := r.dial(ctx, p, true)
	if err != nil {
		unlock()
		return err
	}
	defer conn.close()
	// Catch up: push what waited offline, pull what was missed.
	for _, coll := range p.Collections {
		if _, err := r.syncCollection(ctx, conn, p, coll); err != nil {
			unlock()
			return fmt.Errorf("catching up %s: %w", coll, err)
		}
	}
	unlock()

	// The goroutines forwarding local edits end with the session.
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	feeds := map[string]*Feed{}
	defer func() {
		cancel()
		for _, f := range feeds {
			f.Close()
		}
		wg.Wait()
	}()
	local := make(chan Event, 1024)
	watch := func(coll string) {
		f := (&Collection{r: r, name: coll}).Watch(1024)
		feeds[coll] = f
		wg.Add(1)
		go func() {
			defer wg.Done()
			forwardLocal(ctx, f, local)
		}()
	}
	for _, coll := range p.Collections {
		if p.Type.Pulls() {
			st, err := r.loadSyncState(p.Name, coll)
			if err != nil {
				return err
			}
			if err := conn.call(ctx, &transport.Subscribe{Collection: coll, Cursor: st.Cursor}, &transport.OK{}); err != nil {
				return fmt.Errorf("subscribe %s: %w", coll, err)
			}
		}
		if p.Type.Pushes() {
			watch(coll)
		}
	}
	// Anything edited between the catch-up and the feeds starting.
	for coll := range feeds {
		if err := r.pushNow(ctx, conn, p, coll, nil); err != nil {
			return err
		}
	}
	// The device may change networks (SetNetwork): stay only on an
	// allowed one.
	netWake := r.sched.networkWait()
	r.setState(p.Name, StateLive, "")
	r.syncEnded(p.Name, nil, r.opts.Clock())
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
		case lv, ok := <-conn.client.Live():
			if !ok {
				// Closed just before Done when the connection ends.
				<-conn.client.Done()
				return conn.client.Err()
			}
			if err := r.applyLive(ctx, conn, p, lv); err != nil {
				return err
			}
		case ev := <-local:
			if ev.Origin != Local {
				continue
			}
			ids := map[string][]string{ev.Collection: {ev.ID}}
			// Coalesce what else is already waiting.
		drain:
			for {
				select {
				case ev := <-local:
					if ev.Origin == Local {
						ids[ev.Collection] = append(ids[ev.Collection], ev.ID)
					}
				default:
					break drain
				}
			}
			for coll, list := range ids {
				if err := r.pushNow(ctx, conn, p, coll, list); err != nil {
					return err
				}
			}
		}
		for coll, f := range feeds {
			if err := f.Err(); errors.Is(err, ErrFeedOverflow) {
				// Events were dropped: push everything pending instead.
				watch(coll)
				if err := r.pushNow(ctx, conn, p, coll, nil); err != nil {
					return err
				}
			}
		}
	}
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
// collection instead (leasedSync).
func (r *Replica) pushNow(ctx context.Context, conn *relayConn, p *Profile, coll string, ids []string) error {
	held, err := r.pushUnleased(ctx, conn, p, coll, ids)
	if err != nil || !held {
		return err
	}
	return r.leasedSync(ctx, conn, p, coll)
}

func (r *Replica) pushUnleased(ctx context.Context, conn *relayConn, p *Profile, coll string, ids []string) (heldResolutions bool, err error) {
	unlock, err := r.colls.lock(ctx, coll)
	if err != nil {
		return false, err
	}
	defer unlock()
	s := &collSync{r: r, conn: conn, p: p, coll: coll, cs: &CollectionStats{Collection: coll}}
	if ids == nil {
		err := s.push(ctx)
		return s.heldResolutions, err
	}
	var batch []outgoing
	for _, id := range ids {
		pending, resolved, err := r.pendingState(coll, id)
		if err != nil || !pending {
			continue
		}
		if resolved {
			heldResolutions = true
			continue
		}
		o, err := r.outgoing(coll, id)
		if err != nil {
			return false, err
		}
		if o.changes != nil {
			batch = append(batch, o)
		}
	}
	if len(batch) > 0 {
		if _, err := s.pushBatch(ctx, batch); err != nil {
			return false, err
		}
	}
	return heldResolutions, nil
}

// leasedSync syncs one collection of a live profile under its lease: it
// pulls again, lets the policy decide the conflicts, and pushes the
// resolutions under the lease's fence.
func (r *Replica) leasedSync(ctx context.Context, conn *relayConn, p *Profile, coll string) error {
	unlock := r.sched.lockProfile(p.Name)
	defer unlock()
	_, err := r.syncCollection(ctx, conn, p, coll)
	return err
}

// applyLive applies a live message. Records without conflicting local
// changes are applied at once. If a record's local changes conflict with
// the relay's, nothing of the message moves the cursor: the collection
// syncs under its lease, which pulls again from the cursor, lets the policy
// decide, and pushes the resolution under the fence.
func (r *Replica) applyLive(ctx context.Context, conn *relayConn, p *Profile, lv *transport.Live) error {
	coll := lv.Collection
	recs := make([]remoteRec, 0, len(lv.Records))
	for _, rc := range lv.Records {
		heads, err := crdt.HeadsFromSlices(rc.Heads)
		if err != nil {
			return err
		}
		recs = append(recs, remoteRec{id: rc.Record, data: rc.Data, relay: heads})
	}
	conflict, err := r.applyLiveLocked(ctx, p, coll, recs, lv.Next)
	if err != nil || !conflict {
		return err
	}
	return r.leasedSync(ctx, conn, p, coll)
}

// applyLiveLocked applies the records and moves the cursor to next in one
// store transaction, so a crash keeps both or neither; it is not fsynced
// (see durable.go). A conflict leaves the cursor where it was.
func (r *Replica) applyLiveLocked(ctx context.Context, p *Profile, coll string, recs []remoteRec, next uint64) (conflict bool, err error) {
	unlock, err := r.colls.lock(ctx, coll)
	if err != nil {
		return false, err
	}
	defer unlock()
	res, err := r.applyBatchThen(coll, recs, r.mergeOp, func(txn *badger.Txn, res *batchResult) error {
		if len(res.conflicted) > 0 {
			return nil
		}
		return advanceCursor(txn, p.Name, coll, next)
	})
	return len(res.conflicted) > 0, err
}

// pendingState reports whether a record has changes the relay lacks, and
// whether it holds a conflict resolution only a leased sync may push.
func (r *Replica) pendingState(coll, id string) (pending, resolved bool, err error) {
	err = r.view(func(txn *badger.Txn) (err error) {
		if _, pending, err = getKey(txn, recKey('p', coll, id)); err != nil || !pending {
			return err
		}
		_, resolved, err = getKey(txn, recKey('l', coll, id))
		return err
	})
	return pending, resolved, err
}
