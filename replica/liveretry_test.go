package replica

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/relaytest"
	"github.com/ferrysync/ferry/transport"
)

// The relay refuses a live push once (invalid_change, as a relay judging
// it against an outdated copy of the record did). The refusal shows in the
// status (still live) and reaches Listener.Failed; the session pushes the
// record again after its backoff, and once the cause is gone the record
// goes through and the error clears.
func TestLiveRefusedPushSurfacesAndIsRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rl := relaytest.Start(t, &relaytest.Options{Pipe: true})
		var failed atomic.Int32
		var failedErr atomic.Value
		a := liveDevice(t, rl, nil, Options{Listener: Listener{Failed: func(_ *SyncStats, err error) {
			failed.Add(1)
			failedErr.Store(err)
		}}})
		var refuse atomic.Bool
		refuse.Store(true)
		a.pushFault = func(p *transport.Push) error {
			if refuse.CompareAndSwap(true, false) {
				return &transport.Error{Code: transport.CodeInvalidChange, Message: "refused once, by the test"}
			}
			return nil
		}
		synctest.Wait()
		ca := coll2(t, a, "c")
		if err := ca.Create("x", map[string]any{"n": 1}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		st, err := a.Status("p")
		if err != nil {
			t.Fatal(err)
		}
		if st.State != StateLive || !errors.Is(st.LastError, ErrSyncFailed) || !errors.Is(st.LastError, transport.ErrInvalidChange) {
			t.Fatalf("after the refusal: state %s, last error %v; want live, and the refusal", st.State, st.LastError)
		}
		if n := failed.Load(); n != 1 || !errors.Is(failedErr.Load().(error), transport.ErrInvalidChange) {
			t.Fatalf("Listener.Failed called %d times (%v), want once with the refusal", n, failedErr.Load())
		}
		if n, _ := ca.PendingCount(); n != 1 {
			t.Fatalf("%d pending after the refusal, want 1", n)
		}

		time.Sleep(5 * time.Second) // past the backoff, on the bubble's clock
		synctest.Wait()
		st, _ = a.Status("p")
		if st.State != StateLive || st.LastError != nil {
			t.Fatalf("after the retry: state %s, last error %v; want live, no error", st.State, st.LastError)
		}
		if n, _ := ca.PendingCount(); n != 0 {
			t.Fatalf("%d pending after the retry, want 0", n)
		}
		if _, _, err := relay.Document(context.Background(), rl.Store, relay.Coll{Tenant: rl.App.ID, Collection: "c"}, "x"); err != nil {
			t.Fatalf("the relay does not hold x: %v", err)
		}
	})
}

// writeGate holds every write of the connections it wraps while shut.
type writeGate struct {
	mu sync.Mutex
	ch chan struct{} // closed or nil: open
}

func (g *writeGate) shut() { g.mu.Lock(); defer g.mu.Unlock(); g.ch = make(chan struct{}) }
func (g *writeGate) open() { g.mu.Lock(); defer g.mu.Unlock(); close(g.ch); g.ch = nil }

func (g *writeGate) client(rl *relaytest.Relay) *http.Client {
	dial := rl.HTTPClient.Transport.(*http.Transport).DialContext
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return gatedConn{c, g}, nil
	}}}
}

type gatedConn struct {
	net.Conn
	g *writeGate
}

func (c gatedConn) Write(b []byte) (int, error) {
	c.g.mu.Lock()
	ch := c.g.ch
	c.g.mu.Unlock()
	if ch != nil {
		<-ch
	}
	return c.Conn.Write(b)
}

// Device A is live on a busy collection: while its push waits on the
// relay, another device writes many times, each a live message to A, more
// than A's client buffers. The session drains them meanwhile, so the
// client never cuts itself off as a slow consumer: the push goes through
// on the same connection, and A applies every write.
func TestLiveSessionDrainsWhilePushing(t *testing.T) {
	old := liveBuffer
	liveBuffer = 4
	t.Cleanup(func() { liveBuffer = old })
	synctest.Test(t, func(t *testing.T) {
		rl := relaytest.Start(t, &relaytest.Options{Pipe: true})
		gate := &writeGate{}
		var statuses statusLog
		a := liveDevice(t, rl, gate.client(rl), Options{Listener: Listener{Status: statuses.add}})
		b := pipeDevice(t, rl, Options{}, "")
		synctest.Wait()
		gate.shut()
		ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
		if err := ca.Create("from-a", map[string]any{"n": 1}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // A's push waits on its write
		const writes = 12
		for i := range writes {
			if err := cb.Create(fmt.Sprint("b", i), map[string]any{"n": i}); err != nil {
				t.Fatal(err)
			}
			mustSync(t, b, "p")
			synctest.Wait() // each write reaches A on its own
		}
		gate.open()
		synctest.Wait()
		if statuses.any(func(st SyncStatus) bool { return st.State == StateBackingOff }) {
			st, _ := a.Status("p")
			t.Fatalf("A's live session dropped its connection: %v", st.LastError)
		}
		for i := range writes {
			if err := ca.Get(fmt.Sprint("b", i), &map[string]any{}); err != nil {
				t.Fatalf("A lacks b%d: %v", i, err)
			}
		}
		if n, _ := ca.PendingCount(); n != 0 {
			t.Fatalf("A has %d pending, want 0", n)
		}
		mustSync(t, b, "p")
		if err := cb.Get("from-a", &map[string]any{}); err != nil {
			t.Fatalf("B lacks A's record: %v", err)
		}
	})
}

// The queue of a live session that falls too far behind drops what it
// holds and syncs the collection instead: nothing is lost.
func TestLiveQueueOverflowSyncsTheCollection(t *testing.T) {
	oldBuf, oldQ := liveBuffer, maxLiveQueued
	liveBuffer, maxLiveQueued = 4, 3
	t.Cleanup(func() { liveBuffer, maxLiveQueued = oldBuf, oldQ })
	synctest.Test(t, func(t *testing.T) {
		rl := relaytest.Start(t, &relaytest.Options{Pipe: true})
		gate := &writeGate{}
		var statuses statusLog
		a := liveDevice(t, rl, gate.client(rl), Options{Listener: Listener{Status: statuses.add}})
		b := pipeDevice(t, rl, Options{}, "")
		synctest.Wait()
		gate.shut()
		ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
		if err := ca.Create("from-a", map[string]any{"n": 1}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		const writes = 10
		for i := range writes {
			if err := cb.Create(fmt.Sprint("b", i), map[string]any{"n": i}); err != nil {
				t.Fatal(err)
			}
			mustSync(t, b, "p")
			synctest.Wait()
		}
		gate.open()
		synctest.Wait()
		if statuses.any(func(st SyncStatus) bool { return st.State == StateBackingOff }) {
			st, _ := a.Status("p")
			t.Fatalf("A's live session dropped its connection: %v", st.LastError)
		}
		for i := range writes {
			if err := ca.Get(fmt.Sprint("b", i), &map[string]any{}); err != nil {
				t.Fatalf("A lacks b%d: %v", i, err)
			}
		}
		// The sync that caught up was a step of the live session: the
		// status says live again.
		if st, _ := a.Status("p"); st.State != StateLive || st.Collection != "" || st.LeaseHeld {
			t.Fatalf("after the catch-up sync: state %s, collection %q, lease held %v; want live", st.State, st.Collection, st.LeaseHeld)
		}
	})
}
