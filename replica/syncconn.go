package replica

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/ferrysync/ferry/transport"
)

// relayConn is one connection to a profile's relay, with the profile's
// request timeout and token renewal.
type relayConn struct {
	r       *Replica
	p       *Profile
	client  *transport.Client
	welcome transport.Welcome

	mu       sync.Mutex
	releases []*transport.Pending // lease releases sent, not yet answered
}

// token returns the profile's current token, from Options.TokenSource.
func (r *Replica) token(ctx context.Context, p *Profile) (string, error) {
	if r.opts.TokenSource == nil {
		return "", fmt.Errorf("%w: no Options.TokenSource to give profile %q a token", ErrInvalidProfile, p.Name)
	}
	tok, err := r.opts.TokenSource(ctx, p.Name)
	if err != nil {
		return "", fmt.Errorf("ferry: token source of %q: %w", p.Name, err)
	}
	return tok, nil
}

// dial connects to the profile's relay and says hello.
func (r *Replica) dial(ctx context.Context, p *Profile, live bool) (*relayConn, error) {
	tok, err := r.token(ctx, p)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, p.timeout())
	defer cancel()
	var topts *transport.Options
	if c := r.opts.HTTPClient; c != nil {
		topts = &transport.Options{Dial: &websocket.DialOptions{HTTPClient: c}}
	}
	conn, err := transport.Dial(dctx, p.URL, topts)
	if err != nil {
		return nil, fmt.Errorf("ferry: connect to %s: %w", p.URL, err)
	}
	var copts *transport.ClientOptions
	if live {
		// A live connection may receive bursts before the session's
		// queue takes them (see livequeue.go); give it room before the
		// client cuts itself off.
		copts = &transport.ClientOptions{LiveBuffer: liveBuffer}
	}
	c := &relayConn{r: r, p: p, client: transport.NewClient(conn, copts)}
	hello := &transport.Hello{APIKey: p.APIKey, Token: tok, ReplicaID: r.id, Versions: transport.SupportedVersions()}
	if err := c.client.Call(dctx, hello, &c.welcome); err != nil {
		c.client.Close()
		return nil, fmt.Errorf("ferry: hello to %s: %w", p.URL, err)
	}
	return c, nil
}

// close closes the connection. Lease releases still unanswered are waited
// for first (the relay answers them once it has stored them, a write of
// its own), but not by the caller: a sync returns as soon as its work is
// acknowledged, and the connection ends in the background, within
// releaseTimeout, or at once when the replica closes. A release lost
// with the connection costs nothing either: the relay releases the leases
// of a connection that ends.
func (c *relayConn) close() {
	c.mu.Lock()
	rel := c.releases
	c.releases = nil
	c.mu.Unlock()
	if len(rel) == 0 {
		c.client.Close()
		return
	}
	c.r.ending.run(c.r.closeCtx, func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
		defer cancel()
		for _, p := range rel {
			_ = p.Wait(ctx, nil)
		}
		c.client.Close()
	})
}

// releaseTimeout bounds the wait for the relay's answer to a lease release.
const releaseTimeout = 5 * time.Second

// endings runs the ends of connections in the background, and waits for
// them when the replica closes.
type endings struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// run runs f on a goroutine of its own, or, once wait has begun, at once
// with ctx (which has ended by then).
func (e *endings) run(ctx context.Context, f func(context.Context)) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		f(ctx)
		return
	}
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		f(ctx)
	}()
}

// wait waits for the ends running; later ones run at once.
func (e *endings) wait() {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.wg.Wait()
}

// call makes a request within the profile's timeout. If the relay says the
// token expired, it fetches a fresh one, presents it, and retries once. If
// the relay answers busy (its memory is in use; it did nothing), the
// request is made again after the wait it asks for, growing while it
// stays busy, until the waits pass the profile's timeout: then the error
// is busy, and the next sync tries again.
func (c *relayConn) call(ctx context.Context, req, resp transport.Body) error {
	err := c.callRenewing(ctx, req, resp)
	b := backoff{min: busyBackoffMin, max: busyBackoffMax}
	var waited time.Duration
	for {
		var perr *transport.Error
		if !errors.As(err, &perr) || perr.Code != transport.CodeBusy {
			return err
		}
		wait := max(time.Duration(perr.RetryMS)*time.Millisecond, b.next())
		if waited+wait > c.p.timeout() {
			return err
		}
		waited += wait
		c.r.log.Debug("relay is busy; asking again", "request", req.MessageType(), "wait", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		err = c.callRenewing(ctx, req, resp)
	}
}

// The backoff between requests the relay answered busy, when it asks for
// less (see call).
const (
	busyBackoffMin = 100 * time.Millisecond
	busyBackoffMax = 5 * time.Second
)

// callRenewing is call without busy's retries.
func (c *relayConn) callRenewing(ctx context.Context, req, resp transport.Body) error {
	err := c.callOnce(ctx, req, resp, c.p.timeout())
	if !errors.Is(err, transport.ErrTokenExpired) {
		return err
	}
	tok, terr := c.r.token(ctx, c.p)
	if terr != nil {
		return errors.Join(err, terr)
	}
	if aerr := c.callOnce(ctx, &transport.Auth{Token: tok}, &transport.OK{}, c.p.timeout()); aerr != nil {
		return fmt.Errorf("ferry: renewing token: %w", aerr)
	}
	return c.callOnce(ctx, req, resp, c.p.timeout())
}

func (c *relayConn) callOnce(ctx context.Context, req, resp transport.Body, timeout time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return c.client.Call(cctx, req, resp)
}

// lease is a held collection lease, renewed in the background at half the
// lifetime the relay granted, for as long as the sync holds it. The relay
// may grant less than asked (its max_lease_ttl): the renewals follow what
// it granted, never what was asked.
type lease struct {
	c     *relayConn
	coll  string
	fence uint64
	ttl   time.Duration // asked for at each renewal

	stop chan struct{} // closed by release
	done chan struct{} // closed when the renewer has stopped

	mu  sync.Mutex
	err error // why a renewal failed: the lease may be lost
}

// acquire takes the collection's lease for ttl, waiting at most the
// profile's timeout for another holder to let go.
func (c *relayConn) acquire(ctx context.Context, coll string, ttl time.Duration) (*lease, error) {
	wait := c.p.timeout()
	var l transport.Lease
	req := &transport.LeaseAcquire{Collection: coll, TTLMS: durationMS(ttl), WaitMS: durationMS(wait)}
	err := c.callOnce(ctx, req, &l, wait+c.p.timeout())
	if errors.Is(err, transport.ErrLeaseHeld) || errors.Is(err, transport.ErrLeaseTimeout) {
		return nil, fmt.Errorf("%w: %s after %s: %w", ErrLeaseTimeout, coll, wait, err)
	}
	if errors.Is(err, transport.ErrTokenExpired) {
		err = c.call(ctx, req, &l)
	}
	if err != nil {
		return nil, fmt.Errorf("ferry: lease of %s: %w", coll, err)
	}
	ls := &lease{c: c, coll: coll, fence: l.Fence, ttl: ttl, stop: make(chan struct{}), done: make(chan struct{})}
	go ls.renew(granted(l, ttl))
	return ls, nil
}

// granted is the lifetime the relay gave a lease: its ttl_ms, or, from a
// relay that does not send it, what is left until expires_ms by this
// device's clock (no more than asked).
func granted(l transport.Lease, asked time.Duration) time.Duration {
	if l.TTLMS > 0 {
		return time.Duration(l.TTLMS) * time.Millisecond
	}
	if left := time.Until(time.UnixMilli(l.ExpiresMS)); left > 0 && left < asked {
		return left
	}
	return asked
}

// renew keeps the lease until release, renewing at half of each granted
// lifetime. A failed renewal ends it: the sync sees the error at its next
// step (keep), and its pushes would be refused anyway.
func (l *lease) renew(ttl time.Duration) {
	defer close(l.done)
	for {
		t := time.NewTimer(ttl / 2)
		select {
		case <-l.stop:
			t.Stop()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), ttl/2)
		var resp transport.Lease
		err := l.c.call(ctx, &transport.LeaseRenew{Collection: l.coll, Fence: l.fence, TTLMS: durationMS(l.ttl)}, &resp)
		cancel()
		if err != nil {
			l.mu.Lock()
			l.err = fmt.Errorf("ferry: renewing lease of %s: %w", l.coll, err)
			l.mu.Unlock()
			return
		}
		ttl = granted(resp, l.ttl)
	}
}

// keep reports whether the lease still holds, as far as its renewals know.
func (l *lease) keep(context.Context) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// release stops the renewals and gives the lease back. It does not wait
// for the relay's answer (see relayConn.close): nothing after it on the
// connection needs the lease gone, and a relay handles a connection's
// requests in order, so no push sent later can be taken under the lease.
// Failures only cost others a wait until it expires.
func (l *lease) release() {
	if l == nil {
		return
	}
	close(l.stop)
	<-l.done
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	p, err := l.c.client.Start(ctx, &transport.LeaseRelease{Collection: l.coll, Fence: l.fence})
	if err != nil {
		return
	}
	l.c.mu.Lock()
	l.c.releases = append(l.c.releases, p)
	l.c.mu.Unlock()
}

func (l *lease) fenceOrZero() uint64 {
	if l == nil {
		return 0
	}
	return l.fence
}

// durationMS converts d to whole milliseconds for the wire, within uint32.
func durationMS(d time.Duration) uint32 {
	return uint32(min(max(d/time.Millisecond, 1), math.MaxUint32))
}
