package replica

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/transport"
)

// Sync runs one sync of the profile now and returns its statistics (also
// kept for LastSync). Each collection syncs by the profile's type (see
// docs/conflicts.md): two-way by default, which takes the collection's
// lease, pulls the relay's changes and resolves conflicts by policy, then
// pushes this device's changes under the lease's fence.
//
// On a network the profile may not use, Sync returns ErrDeferred and runs
// the sync later, when SetNetwork reports an allowed
// one. A cancelled ctx stops the sync between records (status stopped);
// what was applied stays applied. If any collection fails, the error wraps
// ErrSyncFailed and the statistics say which and why. Syncs of one profile
// run one at a time.
func (r *Replica) Sync(ctx context.Context, profile string) (*SyncStats, error) {
	if r.opts.LocalOnly {
		return nil, ErrLocalOnly
	}
	p, err := r.Profile(profile)
	if err != nil {
		return nil, err
	}
	return r.syncProfile(ctx, &p)
}

func (r *Replica) syncProfile(ctx context.Context, p *Profile) (*SyncStats, error) {
	st := &SyncStats{Profile: p.Name, Start: r.opts.Clock()}
	if n := r.Network(); !p.Networks.Allows(n) {
		r.sched.deferSync(p.Name)
		r.setState(p.Name, StateDeferred, "")
		return r.finish(p, st, StatusDeferred, fmt.Errorf("%w: on %q, profile %q allows %v", ErrDeferred, n, p.Name, p.Networks))
	}
	if d := r.opts.Delegate.ReadyForSync; d != nil && !d(p.Name) {
		return r.finish(p, st, StatusVetoed, ErrVetoed)
	}
	unlock := r.sched.lockProfile(p.Name)
	defer unlock()
	ctx, cancel := r.withClose(ctx)
	defer cancel()

	r.setState(p.Name, StateConnecting, "")
	conn, err := r.dial(ctx, p, false)
	if err != nil {
		return r.finish(p, st, statusOf(ctx, StatusFailed), err)
	}
	defer conn.close()
	errs := r.syncCollections(ctx, conn, p, st)
	if ctx.Err() != nil {
		return r.finish(p, st, StatusStopped, ctx.Err())
	}
	if len(errs) > 0 {
		var all []error
		for _, c := range p.Collections {
			if e := errs[c]; e != nil {
				all = append(all, fmt.Errorf("%s: %w", c, e))
			}
		}
		return r.finish(p, st, StatusFailed, fmt.Errorf("%w: %w", ErrSyncFailed, errors.Join(all...)))
	}
	return r.finish(p, st, StatusCompleted, nil)
}

// syncCollections syncs each of the profile's collections over conn, as
// the delegate allows, adding their statistics to st, and returns the
// errors of those that failed.
func (r *Replica) syncCollections(ctx context.Context, conn *relayConn, p *Profile, st *SyncStats) map[string]error {
	errs := map[string]error{}
	var failed []string
	run := func(coll string) {
		cs, err := r.syncCollection(ctx, conn, p, coll)
		st.Collections = append(st.Collections, cs)
		if d := r.opts.Delegate.AfterCollection; d != nil {
			d(p.Name, cs)
		}
		if err != nil {
			errs[coll] = err
			failed = append(failed, coll)
		} else {
			delete(errs, coll)
		}
	}
	for _, coll := range p.Collections {
		if ctx.Err() != nil {
			break
		}
		if d := r.opts.Delegate.BeforeCollection; d != nil && !d(p.Name, coll) {
			st.Collections = append(st.Collections, &CollectionStats{Collection: coll, Type: p.Type, Status: StatusSkipped, Start: r.opts.Clock(), End: r.opts.Clock()})
			continue
		}
		run(coll)
	}
	// Collections the delegate wants retried run again, once, after the
	// others: a retry later in the same sync.
	retry := failed
	failed = nil
	for _, coll := range retry {
		if ctx.Err() != nil {
			break
		}
		if d := r.opts.Delegate.CollectionFailed; d != nil && d(p.Name, coll, errs[coll]) == Retry {
			run(coll)
		}
	}
	return errs
}

// finish records how a sync ended: its statistics (for LastSync), the
// profile's status, and the listener's event.
func (r *Replica) finish(p *Profile, st *SyncStats, status Status, err error) (*SyncStats, error) {
	st.Status, st.End = status, r.opts.Clock()
	if err != nil {
		st.Err = err.Error()
	}
	if serr := r.saveStats(st); serr != nil && !errors.Is(serr, ErrClosed) {
		r.log.Warn("saving sync statistics", "profile", p.Name, "err", serr)
	}
	switch status {
	case StatusCompleted:
		r.syncEnded(p.Name, nil, st.End)
	case StatusFailed, StatusStopped:
		r.syncEnded(p.Name, err, st.End)
	}
	if status != StatusDeferred {
		r.setState(p.Name, StateIdle, "")
	}
	l := r.opts.Listener
	switch {
	case status == StatusCompleted && l.Completed != nil:
		l.Completed(st)
	case status == StatusStopped && l.Stopped != nil:
		l.Stopped(st)
	case status == StatusFailed && l.Failed != nil:
		l.Failed(st, err)
	}
	return st, err
}

func statusOf(ctx context.Context, otherwise Status) Status {
	if ctx.Err() != nil {
		return StatusStopped
	}
	return otherwise
}

// withClose returns a ctx that also ends when the replica closes.
func (r *Replica) withClose(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(r.closeCtx, cancel)
	return ctx, func() { stop(); cancel() }
}

// collSync is one collection's sync in progress.
type collSync struct {
	r     *Replica
	conn  *relayConn
	p     *Profile
	coll  string
	cs    *CollectionStats
	res   policy.Resolver
	lease *lease
	state syncState
	// heldResolutions is set by a push without the lease that left
	// records holding conflict resolutions for a leased sync.
	heldResolutions bool
}

func (r *Replica) syncCollection(ctx context.Context, conn *relayConn, p *Profile, coll string) (cs *CollectionStats, err error) {
	cs = &CollectionStats{Collection: coll, Type: p.Type, Start: r.opts.Clock()}
	defer func() {
		cs.End = r.opts.Clock()
		switch {
		case err == nil && len(cs.Failed) > 0:
			cs.Status = StatusFailed
			errs := make([]error, len(cs.Failed))
			for i, f := range cs.Failed {
				errs[i] = f.err
			}
			err = fmt.Errorf("%d record(s) failed: %w", len(cs.Failed), errors.Join(errs...))
			cs.Err = err.Error()
		case err == nil:
			cs.Status = StatusCompleted
		default:
			cs.Status = statusOf(ctx, StatusFailed)
			cs.Err = err.Error()
		}
	}()
	unlock, err := r.colls.lock(ctx, coll)
	if err != nil {
		return cs, err
	}
	defer unlock()
	res, err := r.resolver(p, coll)
	if err != nil {
		return cs, err
	}
	state, err := r.loadSyncState(p.Name, coll)
	if err != nil {
		return cs, err
	}
	s := &collSync{r: r, conn: conn, p: p, coll: coll, cs: cs, res: res, state: state}

	typ := p.Type
	if state.Incarnation != "" && state.Incarnation != conn.welcome.Incarnation &&
		typ != policy.RefreshFromServer && typ != policy.RefreshFromClient {
		// The relay was restored from a backup: cursors and synced heads
		// may point past its log. Compare everything by heads.
		r.log.Info("relay incarnation changed; slow sync", "profile", p.Name, "collection", coll)
		typ = policy.Slow
	}
	cs.Type = typ
	if lease, err := s.needsLease(typ); err != nil {
		return cs, err
	} else if lease {
		r.setState(p.Name, StateWaitingForLease, coll)
		if s.lease, err = conn.acquire(ctx, coll, p.leaseTTL()); err != nil {
			return cs, err
		}
		r.setStatus(p.Name, func(st *SyncStatus) { st.State, st.LeaseHeld = StateSyncing, true })
		defer func() {
			s.lease.release()
			r.setStatus(p.Name, func(st *SyncStatus) { st.LeaseHeld = false })
		}()
	} else {
		r.setState(p.Name, StateSyncing, coll)
	}
	if typ.Pulls() && typ != policy.RefreshFromServer {
		// Records whose merge hook failed last time are retried first.
		if err := s.retryQuarantined(ctx); err != nil {
			return cs, err
		}
	}
	switch typ {
	case policy.TwoWay, policy.OneWayFromServer:
		err = s.pull(ctx, s.state.Cursor, r.mergeOp)
	case policy.Slow:
		err = s.pullAll(ctx, r.mergeOp)
	case policy.RefreshFromServer:
		err = s.pullAll(ctx, r.replaceOp)
	case policy.RefreshFromClient:
		err = s.pullAll(ctx, r.forceOp)
	}
	if err != nil {
		return cs, err
	}
	s.state.Incarnation = conn.welcome.Incarnation
	if err := r.saveSyncState(p.Name, coll, s.state); err != nil {
		return cs, err
	}
	if typ.Pushes() {
		if err := s.push(ctx); err != nil {
			return cs, err
		}
	}
	return cs, nil
}

// needsLease reports whether a sync of type typ takes the collection's
// lease. Refresh from the device always does: it rewrites
// the relay's records. Two-way and slow syncs do when this device has
// changes to push: only a record with local changes can conflict, and a
// resolution is pushed only under the lease taken before the pull that
// found it. With nothing pending they pull and push without it, so a
// device whose token may only read still syncs; a conflict found anyway
// (an edit landed during the pull) is resolved, marked, and pushed by a
// later leased sync.
func (s *collSync) needsLease(typ policy.Type) (bool, error) {
	switch {
	case !typ.Leased():
		return false, nil
	case typ == policy.RefreshFromClient:
		return true, nil
	}
	n, err := (&Collection{r: s.r, name: s.coll}).PendingCount()
	return n > 0, err
}

// retryQuarantined applies again the relay's changes held back by a
// failed merge hook, now that the hook may succeed.
func (s *collSync) retryQuarantined(ctx context.Context) error {
	held, err := s.r.idSet('q', s.coll)
	if err != nil || len(held) == 0 {
		return err
	}
	var recs []remoteRec
	for id := range held {
		recs = append(recs, remoteRec{id: id})
	}
	return s.apply(ctx, recs, s.r.mergeOp)
}

// apply applies a batch of the relay's records with op in one store
// transaction, then settles the conflicts it found by the policy.
func (s *collSync) apply(ctx context.Context, recs []remoteRec, op remoteOp) error {
	res, err := s.r.applyBatch(s.coll, recs, op)
	if err != nil {
		return err
	}
	if len(res.conflicted) > 0 {
		more, err := s.r.resolveConflicted(ctx, s.coll, res.conflicted, s.res)
		res.add(more)
		if err != nil {
			return err
		}
	}
	s.tally(res)
	return nil
}

// pull applies the relay's changes after cursor, page by page, and
// advances the stored cursor as it goes.
func (s *collSync) pull(ctx context.Context, cursor uint64, apply remoteOp) error {
	if cursor == 0 {
		return s.pullAll(ctx, apply)
	}
	total, done := 0, 0
	for {
		var ch transport.Changes
		err := s.conn.call(ctx, &transport.Pull{Collection: s.coll, Cursor: cursor}, &ch)
		if errors.Is(err, transport.ErrTruncated) {
			// The relay truncated its log past this cursor (the device was
			// away longer than it keeps entries): catch up from the
			// records' snapshots, merging as a slow sync does.
			s.r.log.Info("relay log truncated past the cursor; catching up from snapshots", "profile", s.p.Name, "collection", s.coll, "cursor", cursor)
			return s.pullAll(ctx, apply)
		}
		if err != nil {
			return fmt.Errorf("ferry: pull %s: %w", s.coll, err)
		}
		total += len(ch.Records)
		if err := s.applyAll(ctx, ch.Records, apply, total, &done); err != nil {
			return err
		}
		cursor = max(cursor, ch.Next)
		s.state.Cursor = cursor
		if !ch.More {
			return nil
		}
		if err := s.lease.keep(ctx); err != nil {
			return err
		}
	}
}

// pullAll reads every record's snapshot (a fresh pull), applies each, and
// returns with the cursor at the log position the snapshots cover. Records
// this device holds that the relay lacks are handled per sync type.
func (s *collSync) pullAll(ctx context.Context, apply remoteOp) error {
	seen := map[string]bool{}
	total, done := 0, 0
	after := ""
	var next uint64
	for page := 0; ; page++ {
		var ch transport.Changes
		if err := s.conn.call(ctx, &transport.Pull{Collection: s.coll, After: after}, &ch); err != nil {
			return fmt.Errorf("ferry: pull %s: %w", s.coll, err)
		}
		if page == 0 {
			next = ch.Next
		}
		for _, rc := range ch.Records {
			seen[rc.Record] = true
		}
		total += len(ch.Records)
		if err := s.applyAll(ctx, ch.Records, apply, total, &done); err != nil {
			return err
		}
		if !ch.More || ch.After == "" {
			break
		}
		after = ch.After
		if err := s.lease.keep(ctx); err != nil {
			return err
		}
	}
	s.state.Cursor = next
	ids, err := s.r.recordIDs(s.coll)
	if err != nil {
		return err
	}
	var unsynced []string
	for _, id := range ids {
		if seen[id] {
			continue
		}
		switch s.cs.Type {
		case policy.RefreshFromServer:
			a, err := s.r.purgeRecord(s.coll, id)
			if err != nil {
				return err
			}
			s.count(FromRelay, a)
		case policy.Slow, policy.RefreshFromClient, policy.TwoWay:
			// The relay holds nothing of it: push it whole.
			unsynced = append(unsynced, id)
		}
	}
	// In batches, so a store with many local records does not hold one
	// huge transaction.
	for len(unsynced) > 0 {
		n := min(len(unsynced), 1000)
		if err := s.r.markUnsynced(s.coll, unsynced[:n]); err != nil {
			return err
		}
		unsynced = unsynced[n:]
	}
	return nil
}

// batchBytes bounds the data applied in one store transaction, well
// under Badger's transaction limit.
const batchBytes = 512 << 10

// applyAll applies a page of records in transactions of up to batchBytes.
func (s *collSync) applyAll(ctx context.Context, recs []transport.RecordChanges, apply remoteOp, total int, done *int) error {
	var batch []remoteRec
	size := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.apply(ctx, batch, apply); err != nil {
			return err
		}
		*done += len(batch)
		s.progress(FromRelay, total, *done)
		batch, size = nil, 0
		return nil
	}
	for _, rc := range recs {
		heads, err := crdt.HeadsFromSlices(rc.Heads)
		if err != nil {
			return fmt.Errorf("ferry: relay sent bad heads for %s: %w", rc.Record, err)
		}
		if size+len(rc.Data) > batchBytes {
			if err := flush(); err != nil {
				return err
			}
		}
		batch = append(batch, remoteRec{id: rc.Record, data: rc.Data, relay: heads})
		size += len(rc.Data)
	}
	return flush()
}

// tally adds a batch's outcome to the collection's statistics.
func (s *collSync) tally(res batchResult) {
	for _, ev := range res.events {
		s.count(FromRelay, applied{ev: ev, changed: true})
	}
	s.cs.Conflicts += res.conflicts
	s.cs.Failed = append(s.cs.Failed, res.failed...)
}

func (s *collSync) count(dir Direction, a applied) {
	if !a.changed {
		return
	}
	c := &s.cs.FromRelay
	if dir == ToRelay {
		c = &s.cs.ToRelay
	}
	switch a.ev.Kind {
	case Created:
		c.Added++
	case Deleted:
		c.Removed++
	default:
		c.Updated++
	}
}

func (s *collSync) progress(dir Direction, total, done int) {
	pr := Progress{Profile: s.p.Name, Collection: s.coll, Direction: dir, Total: total, Done: done}
	s.r.setStatus(s.p.Name, func(st *SyncStatus) { st.Progress = pr })
	if f := s.r.opts.Listener.Progress; f != nil {
		f(pr)
	}
}
