package relay_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// stuckStore blocks every Log of the collection "stuck" until the call's
// context ends, as a store stalled on a slow disk or a lost database
// connection would.
type stuckStore struct {
	*memstore.Store
	entered chan struct{}
}

func (s *stuckStore) Log(ctx context.Context, c relay.Coll, after uint64, limit int) ([]relay.LogEntry, error) {
	if c.Collection == "stuck" {
		s.entered <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.Store.Log(ctx, c, after, limit)
}

// relayGoroutines lists the stacks of goroutines running relay code.
func relayGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "ferry/relay.") && !strings.Contains(g, "relay.relayGoroutines") && !strings.Contains(g, "testing.tRunner") {
			out = append(out, g)
		}
	}
	return out
}

// noRelayGoroutines fails if relay goroutines outlive the moment Close
// returned. A goroutine that has signaled its end may still be returning,
// so the check looks again for a while before it fails.
func noRelayGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := relayGoroutines()
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d relay goroutines left after Close:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		runtime.Gosched()
	}
}

// When Shutdown's deadline passes with a session stuck in a request, Close
// cuts every session off and returns with nothing left running: not the
// stuck request, not the sessions' subscriptions and lease waits, not the
// goroutines Shutdown started.
func TestCloseAfterShutdownTimesOut(t *testing.T) {
	st := &stuckStore{Store: memstore.New(), entered: make(chan struct{}, 1)}
	tr := newTestRelay(t, st, nil)
	waiting := make(chan struct{}, 1)
	*tr.srv.HookLeaseWaiting() = func(relay.Coll) { waiting <- struct{}{} }

	dial := func(replica string) *transport.Client {
		c, _, err := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], replica)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	holder, waiter, stuck, sub := dial("holder"), dial("waiter"), dial("stuck"), dial("sub")
	mustCall[transport.OK](t, sub, &transport.Subscribe{Collection: "c"})
	mustCall[transport.Lease](t, holder, &transport.LeaseAcquire{Collection: "l", TTLMS: 60_000})
	leaseErr := make(chan error, 1)
	go func() {
		_, err := call[transport.Lease](t, waiter, &transport.LeaseAcquire{Collection: "l", TTLMS: 1000, WaitMS: 60_000})
		leaseErr <- err
	}()
	<-waiting
	pullErr := make(chan error, 1)
	go func() {
		_, err := call[transport.Changes](t, stuck, &transport.Pull{Collection: "stuck", Cursor: 1})
		pullErr <- err
	}()
	<-st.entered

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the deadline has passed
	if err := tr.srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown with a session stuck = %v, want context.Canceled", err)
	}
	if err := tr.srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	noRelayGoroutines(t)

	if err := <-pullErr; !errors.Is(err, transport.ErrShuttingDown) {
		t.Errorf("stuck pull ended with %v, want shutting_down", err)
	}
	// The waiter may be granted the lease the holder's cut released, just
	// before its own session is cut; either way its wait is over.
	if err := <-leaseErr; err != nil && !errors.Is(err, transport.ErrShuttingDown) {
		t.Errorf("lease wait ended with %v, want the lease or shutting_down", err)
	}
	for name, c := range map[string]*transport.Client{"holder": holder, "waiter": waiter, "stuck": stuck, "subscriber": sub} {
		<-c.Done()
		if !errors.Is(c.Err(), transport.ErrShuttingDown) {
			t.Errorf("%s ended with %v, want shutting_down", name, c.Err())
		}
	}
	if err := tr.srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, _, err := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "late"); err == nil {
		t.Fatal("relay accepted a connection after Close")
	}
}

// Close alone, without Shutdown, also ends everything.
func TestCloseWithoutShutdown(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	c := tr.client("shop")
	mustCall[transport.OK](t, c, &transport.Subscribe{Collection: "c"})
	if err := tr.srv.Close(); err != nil {
		t.Fatal(err)
	}
	noRelayGoroutines(t)
	<-c.Done()
	if !errors.Is(c.Err(), transport.ErrShuttingDown) {
		t.Fatalf("client ended with %v, want shutting_down", c.Err())
	}
}

// The relay keeps per-collection state only while it is in use: a
// committer while pushes to the collection are in progress, a hub entry
// while someone waits on it. A relay serving many collections over time
// does not grow with each one it has seen.
func TestPerCollectionStateIsDropped(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	ended := make(chan struct{}, 4)
	*tr.srv.HookSessionEnded() = func() { ended <- struct{}{} }
	w := tr.client("shop")
	sub, _, err := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "sub")
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		coll := fmt.Sprint("c", i)
		mustCall[transport.OK](t, sub, &transport.Subscribe{Collection: coll})
		mustCall[transport.Ack](t, w, pushOf(coll, 0, rec("r", storetest.NewEditor(t, fmt.Sprintf("%04x", 0xb00+i)).Edit(map[string]any{"v": i}))))
		if lv := nextLive(t, sub); lv.Collection != coll {
			t.Fatalf("live for %s, want %s", lv.Collection, coll)
		}
	}
	committers, pushes := tr.srv.PushState()
	if committers != 0 || pushes != 0 {
		t.Errorf("after every push was answered: %d committers, %d push counts, want none", committers, pushes)
	}

	// A lease wait that ends leaves no entry either.
	mustCall[transport.Lease](t, w, &transport.LeaseAcquire{Collection: "l", TTLMS: 60_000})
	if _, err := call[transport.Lease](t, sub, &transport.LeaseAcquire{Collection: "l", TTLMS: 1000, WaitMS: 1}); !errors.Is(err, transport.ErrLeaseTimeout) {
		t.Fatalf("lease wait = %v, want lease_timeout", err)
	}
	if got, _ := tr.srv.HubSizes(); got != 0 {
		t.Errorf("lease hub holds %d collections after the wait ended", got)
	}
	sub.Close()
	<-ended
	if _, got := tr.srv.HubSizes(); got != 0 {
		t.Errorf("live hub holds %d collections after the subscriber left", got)
	}
}

// slowAcquire is a store whose lease acquisitions, once slow is set,
// return only after a few milliseconds have passed: longer than a
// device's short wait_ms.
type slowAcquire struct {
	relay.Store
	slow atomic.Bool
}

func (s *slowAcquire) Acquire(ctx context.Context, c relay.Coll, holder string, ttl time.Duration, now time.Time) (relay.Lease, error) {
	if s.slow.Load() {
		// Real time must pass (the wait's deadline is on the wall
		// clock); nothing is asserted about how long it takes.
		for end := time.Now().Add(5 * time.Millisecond); time.Now().Before(end); {
			runtime.Gosched()
		}
	}
	return s.Store.Acquire(ctx, c, holder, ttl, now)
}

// TestLeaseWaitRunOutBeforeFirstTry: a device that allowed a wait is told
// lease_timeout, as docs/protocol.md says, even when its wait ran out
// before the relay first tried the lease (a slow store, a loaded relay).
func TestLeaseWaitRunOutBeforeFirstTry(t *testing.T) {
	st := &slowAcquire{Store: memstore.New()}
	tr := newTestRelay(t, st, nil)
	holder := tr.client("shop")
	mustCall[transport.Lease](t, holder, &transport.LeaseAcquire{Collection: "l", TTLMS: 60_000})
	other, _, err := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "other")
	if err != nil {
		t.Fatal(err)
	}
	st.slow.Store(true)
	_, err = call[transport.Lease](t, other, &transport.LeaseAcquire{Collection: "l", TTLMS: 1000, WaitMS: 1})
	if !errors.Is(err, transport.ErrLeaseTimeout) {
		t.Fatalf("lease with wait_ms 1 that ran out before the first try = %v, want lease_timeout", err)
	}
	_, err = call[transport.Lease](t, other, &transport.LeaseAcquire{Collection: "l", TTLMS: 1000})
	if !errors.Is(err, transport.ErrLeaseHeld) {
		t.Fatalf("lease with wait_ms 0 = %v, want lease_held", err)
	}
}
