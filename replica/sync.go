package replica

import (
	"context"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/policy"
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

// ownMovedSyncing, if set (by tests), is called by a sync whose push
// moved its cursor, before it makes that durable.
var ownMovedSyncing func()

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
	// pulled says state.Cursor is where this sync's pull ended, so a
	// push's own log entries right after it may move it (ownEntries);
	// ownMoved says they did.
	pulled, ownMoved bool
	// heldResolutions is set by a push without the lease that left
	// records holding conflict resolutions for a leased sync.
	heldResolutions bool
	// ack records what the relay acknowledged; nil: Replica.acknowledge,
	// at once.
	ack func(coll string, batch []outgoing, leased bool) error
	// refreshSince is the store's read timestamp as a refresh from the
	// relay began (see refresh.go).
	refreshSince uint64
}

// syncCollection syncs one collection of the profile over conn, by the
// profile's type, under the collection's lock (and its lease, when the
// type needs one), and returns its statistics.
func (r *Replica) syncCollection(ctx context.Context, conn *relayConn, p *Profile, coll string) (cs *CollectionStats, err error) {
	cs = &CollectionStats{Collection: coll, Type: p.Type, Start: r.opts.Clock()}
	defer func() { err = r.endCollection(ctx, cs, err) }()
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
	if state.Rewound {
		state.Cursor = 0 // see rewindOthers
	}
	s := &collSync{r: r, conn: conn, p: p, coll: coll, cs: cs, res: res, state: state}
	typ := s.syncType()
	cs.Type = typ
	release, err := s.takeLease(ctx, typ)
	if err != nil {
		return cs, err
	}
	defer release()
	if typ == policy.RefreshFromServer {
		// Before anything is discarded, so that a refresh cut short
		// leaves nothing unrecoverable either.
		if err := r.rewindOthers(p.Name, coll); err != nil {
			return cs, err
		}
	}
	if err := s.pullAs(ctx, typ); err != nil {
		return cs, err
	}
	s.state.Incarnation = conn.welcome.Incarnation
	if typ.Pulls() {
		s.state.Rewound = false
	}
	if err := r.saveSyncState(p.Name, coll, s.state); err != nil {
		return cs, err
	}
	s.pulled = typ.Pulls()
	if typ.Pushes() {
		if err := s.push(ctx, nil); err != nil {
			return cs, err
		}
	}
	if s.ownMoved {
		// What the skipped entries hold must outlive the cursor that
		// skips them: a push may have read an edit whose unit of work was
		// still on its way to its fsync. Then only forward: a live
		// session of the profile may have moved the stored cursor further
		// meanwhile. Both under the guard against Close, which closes
		// the store and its syncer once no guarded operation runs.
		if ownMovedSyncing != nil {
			ownMovedSyncing()
		}
		release, err := r.enter()
		if err != nil {
			return cs, err
		}
		err = r.durable(nil)
		if err == nil {
			err = r.db.Update(func(txn *badger.Txn) error { return advanceCursor(txn, p.Name, coll, s.state.Cursor) })
		}
		release()
		if err != nil {
			return cs, err
		}
	}
	return cs, nil
}

// endCollection stamps how a collection's sync ended into cs, and returns
// the sync's error: err, or, if it has none, one naming the records that
// failed.
func (r *Replica) endCollection(ctx context.Context, cs *CollectionStats, err error) error {
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
	return err
}

// syncType is the type the collection syncs as: the profile's, or slow if
// the relay was restored from a backup since the last sync (cursors and
// synced heads may point past its log, so everything is compared by
// heads). The refresh types rewrite one side whole anyway.
func (s *collSync) syncType() policy.Type {
	typ := s.p.Type
	if s.state.Incarnation != "" && s.state.Incarnation != s.conn.welcome.Incarnation &&
		typ != policy.RefreshFromServer && typ != policy.RefreshFromClient {
		s.r.log.Info("relay incarnation changed; slow sync", "profile", s.p.Name, "collection", s.coll)
		typ = policy.Slow
	}
	return typ
}

// takeLease takes the collection's lease if a sync of type typ needs it
// (see needsLease), and sets the profile's status. release gives it back.
func (s *collSync) takeLease(ctx context.Context, typ policy.Type) (release func(), err error) {
	r, name := s.r, s.p.Name
	need, err := s.needsLease(typ)
	if err != nil {
		return nil, err
	}
	if !need {
		r.setState(name, StateSyncing, s.coll)
		return func() {}, nil
	}
	r.setState(name, StateWaitingForLease, s.coll)
	if s.lease, err = s.conn.acquire(ctx, s.coll, s.p.leaseTTL()); err != nil {
		return nil, err
	}
	r.setStatus(name, func(st *SyncStatus) { st.State, st.LeaseHeld = StateSyncing, true })
	return func() {
		s.lease.release()
		r.setStatus(name, func(st *SyncStatus) { st.LeaseHeld = false })
	}, nil
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

// applied is what a sync did to one record, for its statistics.
type applied struct {
	ev      Event
	changed bool
}
