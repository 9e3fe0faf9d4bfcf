package relay

import (
	"context"
	"errors"
	"net/url"
	"time"

	"github.com/ferrysync/ferry/transport"
)

// A collection's lease, as devices ask for it: acquire (waiting while
// another holder has it), renew and release, and the leases a session
// holds, released when it ends so others need not wait for them to
// expire. The store grants leases and checks fences; see Store.

func (sess *session) acquireLease(claims *Claims, env *transport.Envelope, m *transport.LeaseAcquire) (transport.Body, error) {
	c, err := sess.coll(claims, m.Collection, true)
	if err != nil {
		return nil, err
	}
	// Waiting for a lease must not stall the read loop (pings, other
	// requests): answer from a goroutine.
	ctx := sess.ctx
	sess.wg.Add(1)
	go func() {
		defer sess.wg.Done()
		var body transport.Body
		l, err := sess.s.acquire(ctx, sess, c, m)
		if err != nil {
			body = sess.errorBody(env, err)
		} else {
			body = l
		}
		_ = sess.conn.SendBody(ctx, env.ID, body)
	}()
	return nil, nil
}

func (sess *session) renewLease(claims *Claims, m *transport.LeaseRenew) (transport.Body, error) {
	s := sess.s
	c, err := sess.coll(claims, m.Collection, true)
	if err != nil {
		return nil, err
	}
	ttl := min(time.Duration(m.TTLMS)*time.Millisecond, s.opts.MaxLeaseTTL)
	// The store checks the holder too: a fence is a small number that
	// another device could guess.
	l, err := s.store.Renew(sess.ctx, c, sess.holder, m.Fence, ttl, s.now())
	if errors.Is(err, ErrStaleFence) {
		return nil, perr(transport.CodeStaleFence, "fence %d is not a lease of %q that this device holds", m.Fence, m.Collection)
	}
	if err != nil {
		return nil, err
	}
	return &transport.Lease{Collection: m.Collection, Fence: l.Fence, ExpiresMS: l.Expires.UnixMilli(), TTLMS: uint32(ttl / time.Millisecond)}, nil
}

func (sess *session) releaseLease(claims *Claims, m *transport.LeaseRelease) (transport.Body, error) {
	c, err := sess.coll(claims, m.Collection, true)
	if err != nil {
		return nil, err
	}
	err = sess.s.store.Release(sess.ctx, c, sess.holder, m.Fence)
	if errors.Is(err, ErrStaleFence) {
		return nil, perr(transport.CodeStaleFence, "fence %d is not a lease of %q that this device holds", m.Fence, m.Collection)
	}
	if err != nil {
		return nil, err
	}
	sess.dropLease(c, m.Fence)
	sess.s.leases.notify(c)
	return &transport.OK{}, nil
}

// acquire takes the collection's lease, waiting up to m.WaitMS while
// another holder has it.
func (s *Server) acquire(ctx context.Context, sess *session, c Coll, m *transport.LeaseAcquire) (*transport.Lease, error) {
	ttl := time.Duration(m.TTLMS) * time.Millisecond
	if ttl <= 0 {
		ttl = s.opts.DefaultLeaseTTL
	}
	ttl = min(ttl, s.opts.MaxLeaseTTL)
	w := &leaseWait{deadline: time.Now().Add(time.Duration(m.WaitMS) * time.Millisecond), start: time.Now(), asked: m.WaitMS > 0}
	for {
		l, err := s.acquireOnce(ctx, sess, c, ttl, w)
		if !errors.Is(err, errTryAgain) {
			return l, err
		}
	}
}

// leaseWait is the state of one acquire across its tries.
type leaseWait struct {
	deadline time.Time // when the wait the device allowed runs out
	start    time.Time
	asked    bool // the device allowed a wait (wait_ms > 0)
	waited   bool
}

// errTryAgain tells acquire that acquireOnce waited and the lease may be
// free now.
var errTryAgain = errors.New("relay: try the lease again")

// acquireOnce tries to take the lease; if another holder has it and the
// wait allows, it waits for a release or the lease's expiry and returns
// errTryAgain.
func (s *Server) acquireOnce(ctx context.Context, sess *session, c Coll, ttl time.Duration, w *leaseWait) (*transport.Lease, error) {
	wake, done := s.leases.wait(c)
	defer done()
	l, err := s.store.Acquire(ctx, c, sess.holder, ttl, s.now())
	if err == nil {
		if w.waited {
			s.metrics.leaseWait.Observe(time.Since(w.start).Seconds())
		}
		sess.holdLease(c, l.Fence)
		return &transport.Lease{Collection: c.Collection, Fence: l.Fence, ExpiresMS: l.Expires.UnixMilli(), TTLMS: uint32(ttl / time.Millisecond)}, nil
	}
	var held *LeaseHeldError
	if !errors.As(err, &held) {
		return nil, err
	}
	until := held.Lease.Expires.Sub(s.now())
	left := time.Until(w.deadline)
	if left <= 0 {
		// A device that allowed a wait is told it ran out, even if it
		// ran out before the first try (a slow store, a busy relay).
		code := transport.CodeLeaseHeld
		if w.asked {
			code = transport.CodeLeaseTimeout
		}
		e := perr(code, "lease of %q is held until %s", c.Collection, held.Lease.Expires.UTC().Format(time.RFC3339Nano))
		e.RetryMS = uint32(max(until, 0) / time.Millisecond)
		return nil, e
	}
	if !w.waited {
		w.waited = true
		s.metrics.leaseWaits.Inc()
		if s.hooks.leaseWaiting != nil {
			s.hooks.leaseWaiting(c)
		}
	}
	t := time.NewTimer(max(min(left, until), time.Millisecond))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-wake:
	case <-t.C:
	}
	return nil, errTryAgain
}

// holderID names a lease's holder in the store: the token's subject and
// the device's replica ID, each escaped so that neither can hold the
// separator, so two devices never share a name (a subject "a/b" with
// replica "c" is not subject "a" with replica "b/c").
func holderID(subject, replica string) string {
	return url.PathEscape(subject) + "/" + url.PathEscape(replica)
}

// holds reports whether this session acquired the collection's lease with
// this fence and has not released it. Leases are released when their
// session ends, so a fence is only ever good on the connection that
// acquired it.
func (sess *session) holds(c Coll, fence uint64) bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	f, ok := sess.leases[c]
	return ok && f == fence
}

func (sess *session) holdLease(c Coll, fence uint64) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	sess.leases[c] = fence
}

func (sess *session) dropLease(c Coll, fence uint64) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.leases[c] == fence {
		delete(sess.leases, c)
	}
}

// releaseLeases frees the leases of a device that went away, so others
// need not wait for them to expire.
func (sess *session) releaseLeases() {
	sess.mu.Lock()
	held := sess.leases
	sess.leases = map[Coll]uint64{}
	sess.mu.Unlock()
	for c, fence := range held {
		if err := sess.s.store.Release(context.Background(), c, sess.holder, fence); err != nil && !errors.Is(err, ErrStoreClosed) {
			sess.s.log.Warn("releasing lease of a closed session", "tenant", c.Tenant, "collection", c.Collection, "err", err)
		}
		sess.s.leases.notify(c)
	}
}
