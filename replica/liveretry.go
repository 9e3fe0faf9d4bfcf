package replica

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ferrysync/ferry/transport"
)

// liveRetry follows the collections of a live session whose pushes the
// relay refused in part (records listed as failed: invalid_change or
// too_large, say). A refusal is surfaced: in the profile's status
// (LastError, while the state stays live), to Listener.Failed, and in the
// log. The session then pushes every pending record of those collections
// again, after a backoff that grows while they keep failing, until such a
// push goes through: a cause that goes away (a relay that judged the push
// against an outdated copy of the record, a limit raised) never leaves a
// record pending silently. Its methods run on the session's goroutine.
type liveRetry struct {
	r     *Replica
	p     *Profile
	b     backoff
	colls map[string]bool // collections to push again
	t     *time.Timer     // fires for the next retry; nil if none is due
	// failing says the status's LastError is a refusal this session
	// reported, to clear once everything it pushes again goes through.
	failing bool
}

// timer returns the channel of the next retry (nil, which never fires,
// if none is due).
func (rt *liveRetry) timer() <-chan time.Time {
	if rt.t == nil {
		return nil
	}
	return rt.t.C
}

func (rt *liveRetry) stop() {
	if rt.t != nil {
		rt.t.Stop()
		rt.t = nil
	}
}

// pushed is told how a push of cs.Collection went; all says it pushed
// every pending record of the collection (not only some just edited).
// Only records whose changes the relay refused, or that are too large to
// push, count: a failed merge hook or a record edited during its merge is
// retried by every sync anyway, and a damaged record by none.
func (rt *liveRetry) pushed(cs *CollectionStats, all bool) {
	coll := cs.Collection
	var failed []FailedRecord
	for _, f := range cs.Failed {
		var refused *transport.Error
		if errors.As(f.Err(), &refused) || errors.Is(f.Err(), ErrTooLarge) {
			failed = append(failed, f)
		}
	}
	if len(failed) == 0 {
		if !all || !rt.colls[coll] {
			return
		}
		delete(rt.colls, coll)
		if len(rt.colls) > 0 {
			return
		}
		rt.b.reset()
		rt.stop()
		if rt.failing {
			rt.failing = false
			rt.r.setStatus(rt.p.Name, func(st *SyncStatus) { st.LastError = nil })
		}
		return
	}
	errs := make([]error, 0, len(failed))
	for _, f := range failed {
		errs = append(errs, fmt.Errorf("%s: %w", f.ID, f.Err()))
	}
	err := fmt.Errorf("%w: live push of %s: %d record(s) not accepted: %w", ErrSyncFailed, coll, len(failed), errors.Join(errs...))
	rt.colls[coll] = true
	rt.failing = true
	now := rt.r.opts.Clock()
	rt.r.setStatus(rt.p.Name, func(st *SyncStatus) { st.LastError, st.LastErrorAt = err, now })
	if f := rt.r.opts.Listener.Failed; f != nil {
		cs.Status, cs.Err = StatusFailed, err.Error()
		f(&SyncStats{Profile: rt.p.Name, Status: StatusFailed, Start: cs.Start, End: cs.End, Collections: []*CollectionStats{cs}, Err: err.Error()}, err)
	}
	if rt.t == nil {
		d := rt.b.next()
		rt.r.log.Warn("live push not accepted; pushing again later", "profile", rt.p.Name, "collection", coll, "records", len(failed), "in", d, "err", err)
		rt.t = time.NewTimer(d)
	}
}

// retry pushes again every pending record of the collections that failed.
// Those that fail again set the next retry, further off.
func (rt *liveRetry) retry(ctx context.Context, conn *relayConn) error {
	rt.t = nil
	colls := make([]string, 0, len(rt.colls))
	for c := range rt.colls {
		colls = append(colls, c)
	}
	slices.Sort(colls)
	for _, coll := range colls {
		if err := rt.r.pushNow(ctx, conn, rt.p, rt, nil, coll, nil); err != nil { // the session drained its early pushes
			return err
		}
	}
	return nil
}
