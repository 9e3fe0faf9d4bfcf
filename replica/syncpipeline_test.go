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

	"github.com/ferrysync/ferry/crdt"
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

// A sync's own log entries, right after where its pull ended, are not
// pulled back: the cursor moves past them as the relay acknowledges them,
// and the next sync asks for nothing. Another device's entry between the
// pull and the push keeps the cursor before it, and the next sync brings
// that entry.
func TestSyncSkipsItsOwnEntries(t *testing.T) {
	const n = 10 // 4 pushes of up to 3 records
	ctx := context.Background()
	for _, between := range []bool{false, true} {
		t.Run(fmt.Sprintf("another-device-between=%v", between), func(t *testing.T) {
			e, gate, a, _ := pipelineSyncEnv(t, n, nil)
			gate.open(true, nil)
			coll := relay.Coll{Tenant: e.app.ID, Collection: "c"}
			if between {
				var once sync.Once
				a.pushFault = func(*transport.Push) error {
					once.Do(func() { pushOther(t, e, "x") }) // before a's first push is sent
					return nil
				}
			}
			mustSync(t, a, "p")
			st, err := a.loadSyncState("p", "c")
			if err != nil {
				t.Fatal(err)
			}
			head, err := e.store.Head(ctx, coll)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case !between && st.Cursor != head:
				t.Fatalf("cursor %d after pushing every entry up to %d itself, want it there", st.Cursor, head)
			case between && st.Cursor != 0:
				t.Fatalf("cursor %d, want 0: another device's entry 1 came before a's own", st.Cursor)
			}
			ps := mustSync(t, a, "p")
			if got, want := stat(ps, "c").FromRelay.Added, map[bool]int{false: 0, true: 1}[between]; got != want {
				t.Fatalf("the next sync added %d records from the relay, want %d", got, want)
			}
			if between {
				if f := getFields(t, a, "c", "x"); f["n"] != int64(-1) {
					t.Fatalf("a has x = %v after the next sync", f)
				}
			}
			if k, _ := a.Collection("c").PendingCount(); k != 0 {
				t.Fatalf("%d pending, want 0", k)
			}
		})
	}
}

// pushOther pushes record id as another device, over a connection of its
// own and without a lease.
func pushOther(t *testing.T, e *syncEnv, id string) {
	t.Helper()
	c := e.rawClient("other")
	d, err := crdt.New("0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	if err := d.Put(map[string]any{"n": int64(-1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Commit("", time.Time{}); err != nil {
		t.Fatal(err)
	}
	changes, err := d.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	push := &transport.Push{Collection: "c", Records: []transport.RecordChanges{{Record: id, Data: changes, Heads: d.Heads().Slices()}}}
	if err := c.Call(context.Background(), push, &transport.Ack{}); err != nil {
		t.Fatal(err)
	}
}

// A sync's first pushes are small, and each may carry twice the records of
// the one before, up to the relay's max_batch: the relay has the first to
// check while the device reads the records of the next.
func TestSyncFirstPushesAreSmall(t *testing.T) {
	e := newSyncEnv(t)
	a := e.device(nil)
	var mu sync.Mutex
	var sizes []int
	a.pushFault = func(p *transport.Push) error {
		mu.Lock()
		defer mu.Unlock()
		sizes = append(sizes, len(p.Records))
		return nil
	}
	err := a.Write(func(tx *Tx) error {
		for i := range 300 {
			if err := tx.Create("c", fmt.Sprintf("r%03d", i), map[string]any{"n": int64(i)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	mustSync(t, a, "p")
	mu.Lock()
	defer mu.Unlock()
	if want := []int{32, 64, 128, 76}; !slices.Equal(sizes, want) {
		t.Fatalf("pushes of %v records, want %v", sizes, want)
	}
}
