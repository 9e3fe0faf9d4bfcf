package replica

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrysync/ferry/transport"
)

// relayConn is one connection to a profile's relay, with the profile's
// request timeout and token renewal.
type relayConn struct {
	r       *Replica
	p       *Profile
	client  *transport.Client
	welcome transport.Welcome
}

// token returns the profile's current token.
func (r *Replica) token(ctx context.Context, p *Profile) (string, error) {
	if src := r.tokenSource(p.Name); src != nil {
		tok, err := src(ctx)
		if err != nil {
			return "", fmt.Errorf("ferry: token source of %q: %w", p.Name, err)
		}
		return tok, nil
	}
	return p.Token, nil
}

// dial connects to the profile's relay and says hello.
func (r *Replica) dial(ctx context.Context, p *Profile, live bool) (*relayConn, error) {
	tok, err := r.token(ctx, p)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, p.timeout())
	defer cancel()
	conn, err := transport.Dial(dctx, p.URL, nil)
	if err != nil {
		return nil, fmt.Errorf("ferry: connect to %s: %w", p.URL, err)
	}
	var copts *transport.ClientOptions
	if live {
		// A live connection may receive bursts while the engine applies a
		// batch; give it room before the client cuts itself off.
		copts = &transport.ClientOptions{LiveBuffer: 1024}
	}
	c := &relayConn{r: r, p: p, client: transport.NewClient(conn, copts)}
	hello := &transport.Hello{APIKey: p.APIKey, Token: tok, ReplicaID: r.id, Versions: transport.SupportedVersions()}
	if err := c.client.Call(dctx, hello, &c.welcome); err != nil {
		c.client.Close()
		return nil, fmt.Errorf("ferry: hello to %s: %w", p.URL, err)
	}
	return c, nil
}

func (c *relayConn) close() { c.client.Close() }

// call makes a request within the profile's timeout. If the relay says the
// token expired, it fetches a fresh one, presents it, and retries once.
func (c *relayConn) call(ctx context.Context, req, resp transport.Body) error {
	err := c.callOnce(ctx, req, resp, c.p.timeout())
	if !errors.Is(err, transport.ErrTokenExpired) || c.r.tokenSource(c.p.Name) == nil {
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

// lease is a held collection lease, renewed as a long sync goes on.
type lease struct {
	c       *relayConn
	coll    string
	fence   uint64
	ttl     time.Duration
	expires time.Time // by the local clock, conservatively
}

// acquire takes the collection's lease, waiting at most the profile's
// timeout for another holder to let go.
func (c *relayConn) acquire(ctx context.Context, coll string) (*lease, error) {
	wait := c.p.timeout()
	ttl := max(2*wait, 30*time.Second)
	start := time.Now()
	var l transport.Lease
	req := &transport.LeaseAcquire{Collection: coll, TTLMS: uint32(ttl / time.Millisecond), WaitMS: uint32(wait / time.Millisecond)}
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
	return &lease{c: c, coll: coll, fence: l.Fence, ttl: ttl, expires: start.Add(ttl)}, nil
}

// keep renews the lease if less than half its lifetime is left.
func (l *lease) keep(ctx context.Context) error {
	if l == nil || time.Until(l.expires) > l.ttl/2 {
		return nil
	}
	start := time.Now()
	var resp transport.Lease
	if err := l.c.call(ctx, &transport.LeaseRenew{Collection: l.coll, Fence: l.fence, TTLMS: uint32(l.ttl / time.Millisecond)}, &resp); err != nil {
		return fmt.Errorf("ferry: renewing lease of %s: %w", l.coll, err)
	}
	l.expires = start.Add(l.ttl)
	return nil
}

// release gives the lease back; failures only cost others a wait until
// it expires.
func (l *lease) release() {
	if l == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = l.c.client.Call(ctx, &transport.LeaseRelease{Collection: l.coll, Fence: l.fence}, nil)
}

func (l *lease) fenceOrZero() uint64 {
	if l == nil {
		return 0
	}
	return l.fence
}
