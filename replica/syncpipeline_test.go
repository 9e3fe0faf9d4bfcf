package replica

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/relaytest"
	"github.com/ferrysync/ferry/transport"
)

// pipelineSyncEnv is a relay taking pushes of up to 3 records on a gated
// store, and device a with n records to push, whose pushes are counted
// and may be refused by refuse (nil: none).
func pipelineSyncEnv(t *testing.T, n int, refuse func(*transport.Push) error) (*syncEnv, *appendGate, *Replica, *pushCounter) {
	t.Helper()
	e := newSyncEnv(t)
	base := memstore.New()
	t.Cleanup(func() { base.Close() })
	gate := newAppendGate(base)
	e.swapWith(gate, func(o *relay.Options) { o.Limits = transport.Limits{MaxBatch: 3} })
	// Before the relay's Close, which waits for the pushes the gate holds.
	t.Cleanup(func() { gate.open(true, nil) })
	a := open(t, "", &Options{InMemory: true, TokenSource: StaticToken(e.token)})
	pc := &pushCounter{reached: map[int]chan struct{}{}}
	a.pushFault = func(p *transport.Push) error {
		pc.sent()
		if refuse != nil {
			return refuse(p)
		}
		return nil
	}
	if err := a.AddProfile(e.profile("p")); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := a.Collection("c").Create(fmt.Sprintf("r%02d", i), map[string]any{"n": int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	return e, gate, a, pc
}

// pushCounter counts the pushes a device sends.
type pushCounter struct {
	mu      sync.Mutex
	n       int
	reached map[int]chan struct{} // closed once n pushes are sent
}

func (c *pushCounter) sent() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if ch := c.reached[c.n]; ch != nil {
		close(ch)
	}
}

// wait waits until n pushes are sent.
func (c *pushCounter) wait(t *testing.T, n int) {
	t.Helper()
	c.mu.Lock()
	ch := c.reached[n]
	if ch == nil {
		ch = make(chan struct{})
		if c.n >= n {
			close(ch)
		}
		c.reached[n] = ch
	}
	c.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("the device sent %d pushes, want %d while the relay held the first", c.n, n)
	}
}

// A sync sends its next pushes while the relay is still making the first
// durable, up to syncPushWindow of them, and records no acknowledgement
// before the relay has answered; once it has, every record is pushed once
// and nothing stays pending.
func TestSyncPipelinesPushes(t *testing.T) {
	const n = 10 // 4 pushes of up to 3 records
	e, gate, a, pc := pipelineSyncEnv(t, n, nil)
	gate.close()
	done := make(chan error, 1)
	go func() {
		_, err := a.Sync(context.Background(), "p")
		done <- err
	}()
	<-gate.waiting // the relay's append of the first push is held
	want := min(syncPushWindow, 4)
	if want < 2 {
		t.Fatalf("syncPushWindow is %d: a sync's pushes are not pipelined", syncPushWindow)
	}
	pc.wait(t, want)
	if k, _ := a.Collection("c").PendingCount(); k != n {
		t.Fatalf("%d pending while the relay holds the first push, want all %d: an ack recorded before the relay answered", k, n)
	}
	gate.open(true, nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if k, _ := a.Collection("c").PendingCount(); k != 0 {
		t.Fatalf("%d pending after the sync, want 0", k)
	}
	es, err := e.store.Log(context.Background(), relay.Coll{Tenant: e.app.ID, Collection: "c"}, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for _, en := range es {
		per[en.Record]++
	}
	for i := range n {
		if id := fmt.Sprintf("r%02d", i); per[id] != 1 {
			t.Fatalf("%s has %d relay log entries, want 1 (%v)", id, per[id], per)
		}
	}
}

// A push the relay refuses while later ones are in flight is handled as
// a refused push always is: a batch refused as invalid is pushed again
// record by record, so that only the record at fault fails, and one the
// relay was busy for is pushed again once it has room. The pushes behind
// it are acknowledged either way.
func TestSyncPipelinedPushRefused(t *testing.T) {
	for _, code := range []transport.Code{transport.CodeInvalidChange, transport.CodeBusy} {
		t.Run(string(code), func(t *testing.T) {
			const n = 10
			var mu sync.Mutex
			refused := 0
			_, gate, a, _ := pipelineSyncEnv(t, n, func(p *transport.Push) error {
				mu.Lock()
				defer mu.Unlock()
				bad := slices.ContainsFunc(p.Records, func(r transport.RecordChanges) bool { return r.Record == "r04" })
				if !bad || (code == transport.CodeBusy && refused > 0) {
					return nil
				}
				refused++
				return &transport.Error{Code: code, Message: "refused by the test", RetryMS: 1}
			})
			gate.close()
			done := make(chan error, 1)
			go func() {
				_, err := a.Sync(context.Background(), "p")
				done <- err
			}()
			<-gate.waiting
			gate.open(true, nil)
			err := <-done
			pending, perr := a.Collection("c").Pending()
			if perr != nil {
				t.Fatal(perr)
			}
			switch code {
			case transport.CodeInvalidChange:
				if !errors.Is(err, ErrSyncFailed) {
					t.Fatalf("sync: %v, want r04 failed", err)
				}
				if !slices.Equal(pending, []string{"r04"}) {
					t.Fatalf("pending after the sync: %v, want only r04", pending)
				}
			default:
				if err != nil || len(pending) != 0 {
					t.Fatalf("sync: %v, pending %v; want every record pushed once the relay has room", err, pending)
				}
			}
		})
	}
}

// A pipelined push whose answer never comes fails the sync once the
// profile's timeout has passed, as any request does, and the records stay
// pending. Runs on relaytest's in-memory network in a synctest bubble, so
// the timeout passes on the bubble's clock.
func TestSyncPipelinedPushTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := memstore.New()
		defer base.Close()
		gate := newAppendGate(base)
		rl := relaytest.Start(t, &relaytest.Options{Pipe: true, Store: gate, Relay: relay.Options{Limits: transport.Limits{MaxBatch: 3}}})
		a := pipeDevice(t, rl, Options{}, "")
		p, err := a.Profile("p")
		if err != nil {
			t.Fatal(err)
		}
		const n = 10
		for i := range n {
			if err := a.Collection("c").Create(fmt.Sprintf("r%02d", i), map[string]any{"n": int64(i)}); err != nil {
				t.Fatal(err)
			}
		}
		gate.close()
		defer gate.open(false, errors.New("the test is over"))
		start := time.Now()
		_, err = a.Sync(context.Background(), "p")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("sync with the relay's append held: %v, want a deadline", err)
		}
		if waited := time.Since(start); waited < p.Timeout {
			t.Fatalf("the sync gave up after %v, before the profile's timeout of %v", waited, p.Timeout)
		}
		if k, _ := a.Collection("c").PendingCount(); k != n {
			t.Fatalf("%d pending after the sync timed out, want all %d", k, n)
		}
	})
}
