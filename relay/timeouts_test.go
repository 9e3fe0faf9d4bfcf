package relay_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/relaytest"
	"github.com/ferrysync/ferry/transport"
)

// dialPipe connects to rl over its in-memory network, without keepalive
// (its pings would move a synctest bubble's clock), and says nothing.
func dialPipe(t *testing.T, rl *relaytest.Relay) *transport.Conn {
	t.Helper()
	conn, err := transport.Dial(context.Background(), rl.URL, &transport.Options{PingInterval: -1, Dial: &websocket.DialOptions{HTTPClient: rl.HTTPClient}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// A connection that sends no hello is dropped once the hello timeout (the
// documented default, 10 s) has passed, not before, and without a close
// frame or an error message; one that said hello at once stays. On the
// relay's in-memory network, in a synctest bubble: the 10 s are fake.
func TestHelloTimeoutDropsSilentConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rl := relaytest.Start(t, &relaytest.Options{Pipe: true})
		start := time.Now()
		silent := dialPipe(t, rl)
		greeted := transport.NewClient(dialPipe(t, rl), nil)
		t.Cleanup(func() { greeted.Close() })
		hello := &transport.Hello{APIKey: rl.App.APIKey, Token: rl.Token, ReplicaID: "prompt", Versions: transport.SupportedVersions()}
		if err := greeted.Call(context.Background(), hello, &transport.Welcome{}); err != nil {
			t.Fatal(err)
		}
		type recv struct {
			env   *transport.Envelope
			err   error
			after time.Duration // since connecting
		}
		got := make(chan recv, 1)
		go func() {
			env, err := silent.Recv(context.Background())
			got <- recv{env, err, time.Since(start)}
		}()

		time.Sleep(10*time.Second - time.Millisecond - time.Since(start))
		synctest.Wait()
		select {
		case r := <-got:
			t.Fatalf("silent connection ended %v after connecting, before the hello timeout: %v, %v", r.after, r.env, r.err)
		default:
		}

		time.Sleep(time.Millisecond)
		synctest.Wait()
		var r recv
		select {
		case r = <-got:
		default:
			t.Fatalf("silent connection still open %v after connecting", time.Since(start))
		}
		if r.err == nil {
			t.Fatalf("relay sent %v to a connection that sent no hello", r.env)
		}
		// Dropped, not closed: a close frame would carry a status.
		if st := websocket.CloseStatus(r.err); st != -1 {
			t.Fatalf("silent connection closed with status %d (%v), want no close frame", st, r.err)
		}

		// The timeout is the hello's alone: the device that said hello
		// is still served.
		if err := greeted.Call(context.Background(), &transport.Subscribe{Collection: "c"}, &transport.OK{}); err != nil {
			t.Fatalf("device that said hello, after the hello timeout: %v", err)
		}
	})
}

// A lease asked for longer than max_lease_ttl is granted for max_lease_ttl
// only, and lapses then, so another device can take it; a renewal is
// capped the same way.
func TestMaxLeaseTTLCapsLease(t *testing.T) {
	const maxTTL = 2 * time.Second
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) { o.MaxLeaseTTL = maxTTL })
	a, _, _ := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "dev-a")
	b, _, _ := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "dev-b")
	acquire := &transport.LeaseAcquire{Collection: "c", TTLMS: 3_600_000}

	// granted checks l was granted for maxTTL from now.
	granted := func(what string, l *transport.Lease) {
		t.Helper()
		if l.TTLMS != uint32(maxTTL/time.Millisecond) || l.ExpiresMS != tr.clock.Now().Add(maxTTL).UnixMilli() {
			t.Fatalf("%s for an hour: ttl_ms %d, expires in %v; want the cap, %v", what, l.TTLMS, time.UnixMilli(l.ExpiresMS).Sub(tr.clock.Now()), maxTTL)
		}
	}
	// takeOver checks that b cannot take the lease until it lapses in
	// left, and can then.
	takeOver := func(c *transport.Client, left time.Duration) *transport.Lease {
		t.Helper()
		tr.clock.Advance(left - time.Millisecond)
		if _, err := call[transport.Lease](t, c, acquire); !errors.Is(err, transport.ErrLeaseHeld) {
			t.Fatalf("acquire 1 ms before the capped lease lapses = %v, want lease_held", err)
		}
		tr.clock.Advance(time.Millisecond)
		l, err := call[transport.Lease](t, c, acquire)
		if err != nil {
			t.Fatalf("acquire once the capped lease lapsed: %v", err)
		}
		return l
	}

	la := mustCall[transport.Lease](t, a, acquire)
	granted("acquire", la)
	lb := takeOver(b, maxTTL)
	granted("acquire", lb)

	tr.clock.Advance(time.Second)
	granted("renew", mustCall[transport.Lease](t, b, &transport.LeaseRenew{Collection: "c", Fence: lb.Fence, TTLMS: 3_600_000}))
	takeOver(a, maxTTL)
}

// A lease asked for with no ttl_ms gets default_lease_ttl, and lapses
// then, so another device can take it.
func TestDefaultLeaseTTLWhenNoneAsked(t *testing.T) {
	const defaultTTL = 3 * time.Second
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) { o.DefaultLeaseTTL = defaultTTL })
	a, _, _ := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "dev-a")
	b, _, _ := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "dev-b")
	acquire := &transport.LeaseAcquire{Collection: "c"}
	l := mustCall[transport.Lease](t, a, acquire)
	if l.TTLMS != uint32(defaultTTL/time.Millisecond) || l.ExpiresMS != tr.clock.Now().Add(defaultTTL).UnixMilli() {
		t.Fatalf("acquire without ttl_ms: ttl_ms %d, expires in %v; want the default, %v", l.TTLMS, time.UnixMilli(l.ExpiresMS).Sub(tr.clock.Now()), defaultTTL)
	}
	tr.clock.Advance(defaultTTL - time.Millisecond)
	if _, err := call[transport.Lease](t, b, acquire); !errors.Is(err, transport.ErrLeaseHeld) {
		t.Fatalf("acquire 1 ms before the default lease lapses = %v, want lease_held", err)
	}
	tr.clock.Advance(time.Millisecond)
	if lb := mustCall[transport.Lease](t, b, acquire); lb.Fence <= l.Fence {
		t.Fatalf("lease taken over with fence %d, after %d", lb.Fence, l.Fence)
	}
}
