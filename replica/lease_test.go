package replica

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/relaytest"
)

// pipeDevice opens an in-memory replica that reaches rl over its
// in-memory network, with a manual two-way profile "p" for collection c.
func pipeDevice(t *testing.T, rl *relaytest.Relay, o Options, pol policy.Policy) *Replica {
	t.Helper()
	o.InMemory, o.HTTPClient, o.TokenSource = true, rl.HTTPClient, StaticToken(rl.Token)
	r := open(t, "", &o)
	err := r.AddProfile(Profile{Name: "p", URL: rl.URL, APIKey: rl.App.APIKey,
		Mode: policy.Manual, Type: policy.TwoWay, Collections: []string{"c"}, Policy: pol,
		Timeout: 10 * time.Second, LeaseTTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The relay grants less than a device asks (max_lease_ttl 2 s for a 10 s
// request). A sync that holds the lease for 3 s, in a slow merge hook,
// renews it by what the relay granted, so its push is not refused as
// stale. Runs on the relay's fake clock in a synctest bubble.
func TestLeaseRenewedByWhatTheRelayGrants(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rl := relaytest.Start(t, &relaytest.Options{Pipe: true, Relay: relay.Options{MaxLeaseTTL: 2 * time.Second}})
		slow := policy.ResolverFunc(func(*policy.Conflict) (policy.Decision, error) {
			time.Sleep(3 * time.Second)
			return policy.Keep(int64(99)), nil
		})
		a := pipeDevice(t, rl, Options{}, "")
		b := pipeDevice(t, rl, Options{MergeHook: slow}, policy.Custom)
		ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
		if err := ca.Create("tea", map[string]any{"price": 10}); err != nil {
			t.Fatal(err)
		}
		mustSync(t, a, "p")
		mustSync(t, b, "p")
		ca.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 12) })
		cb.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 15) })
		mustSync(t, a, "p")
		start := time.Now()
		mustSync(t, b, "p")
		if took := time.Since(start); took < 3*time.Second {
			t.Fatalf("the sync took %v of fake time; the hook alone sleeps 3 s", took)
		}
		mustSync(t, a, "p")
		for _, r := range []*Replica{a, b} {
			if f := getFields(t, r, "c", "tea"); f["price"] != int64(99) {
				t.Fatalf("%s has %v", r.ID()[:6], f)
			}
		}
	})
}

// A device away longer than the relay keeps its log (the relay compacted
// the records and truncated the log past the device's cursor) catches up
// from the records' snapshots: its sync succeeds, its own offline edits
// are merged by its policy, and both devices converge.
func TestSyncPastTheLogHorizon(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rl := relaytest.Start(t, &relaytest.Options{Pipe: true, Relay: relay.Options{LogRetention: 2, CompactInterval: time.Second}})
		a := pipeDevice(t, rl, Options{}, "")
		b := pipeDevice(t, rl, Options{}, policy.PreferLocal)
		ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
		if err := ca.Create("x", map[string]any{"n": 0}); err != nil {
			t.Fatal(err)
		}
		mustSync(t, a, "p")
		mustSync(t, b, "p")
		// b goes away; a writes a lot, in big changes that make x a
		// compaction candidate.
		if err := cb.Update("x", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, 100) }); err != nil {
			t.Fatal(err)
		}
		cb.Create("y", map[string]any{"from": "b"})
		for i := range 10 {
			err := ca.Update("x", func(d *crdt.Doc) error {
				d.Set(crdt.Path{"pad"}, strings.Repeat(string(rune('a'+i)), 1000))
				return d.Set(crdt.Path{"n"}, int64(i+1))
			})
			if err != nil {
				t.Fatal(err)
			}
			mustSync(t, a, "p")
		}
		time.Sleep(3 * time.Second) // the compactor's rounds, on the fake clock
		synctest.Wait()
		st, err := rl.Store.Stats(context.Background())
		if err != nil || st.LogEntries > 3 {
			t.Fatalf("the relay keeps %d log entries (%v): not truncated", st.LogEntries, err)
		}
		mustSync(t, b, "p") // from a cursor below the horizon
		mustSync(t, a, "p")
		for _, r := range []*Replica{a, b} {
			if f := getFields(t, r, "c", "x"); f["n"] != int64(100) || f["pad"] != strings.Repeat("j", 1000) {
				t.Fatalf("%s has x = n %v pad %.3q...", r.ID()[:6], f["n"], f["pad"])
			}
			if f := getFields(t, r, "c", "y"); f["from"] != "b" {
				t.Fatalf("%s has y = %v", r.ID()[:6], f)
			}
			if n, _ := coll2(t, r, "c").PendingCount(); n != 0 {
				t.Fatalf("%s has %d pending", r.ID()[:6], n)
			}
		}
	})
}

// replicaGoroutines lists the goroutines running code of this package,
// other than tests.
func replicaGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "ferry/replica.") && !strings.Contains(g, "ferry/replica.Test") && !strings.Contains(g, "replicaGoroutines") {
			out = append(out, g)
		}
	}
	return out
}

// Close waits for every goroutine the replica started: live sessions,
// their forwarders of local edits, lease renewals, schedulers. None is
// left when it returns.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rl := relaytest.Start(t, &relaytest.Options{Pipe: true})
		r := pipeDevice(t, rl, Options{BackoffMin: time.Millisecond, BackoffMax: 10 * time.Millisecond}, "")
		p, _ := r.Profile("p")
		p.Mode = policy.Live
		p.Collections = []string{"c", "d"}
		if err := r.UpdateProfile(p); err != nil {
			t.Fatal(err)
		}
		periodic := p
		periodic.Name, periodic.Mode, periodic.Interval = "q", policy.Periodic, time.Second
		if err := r.AddProfile(periodic); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			coll2(t, r, "c").Put(fmt.Sprint("x", i), map[string]any{"i": i})
			synctest.Wait() // the live session has taken the edit
		}
		synctest.Wait()
		if len(replicaGoroutines()) == 0 {
			t.Fatal("no goroutine of the replica is running: the test sees nothing")
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if left := replicaGoroutines(); len(left) > 0 {
			t.Fatalf("%d goroutine(s) left after Close:\n%s", len(left), strings.Join(left, "\n\n"))
		}
	})
}

// heldReleaseStore holds every lease release until gate is closed,
// counting those done.
type heldReleaseStore struct {
	relay.Store
	gate     chan struct{}
	released atomic.Int32
}

func (s *heldReleaseStore) Release(ctx context.Context, c relay.Coll, holder string, fence uint64) error {
	<-s.gate
	err := s.Store.Release(ctx, c, holder, fence)
	s.released.Add(1)
	return err
}

// A sync returns once its push is acknowledged, without waiting for the
// relay to store the lease's release (a write, fsynced on a durable
// relay): the connection finishes in the background. The lease is still
// released, another device then takes it, and Close waits for what is
// left.
func TestSyncReturnsBeforeTheLeaseRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &heldReleaseStore{Store: memstore.New(), gate: make(chan struct{})}
		rl := relaytest.Start(t, &relaytest.Options{Pipe: true, Store: store})
		a := pipeDevice(t, rl, Options{}, "")
		b := pipeDevice(t, rl, Options{}, "")
		if err := coll2(t, a, "c").Create("tea", map[string]any{"price": 10}); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := a.Sync(context.Background(), "p")
			done <- err
		}()
		synctest.Wait()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		default:
			close(store.gate)
			<-done
			t.Fatal("the sync waits for the relay to store its lease's release")
		}
		if n := store.released.Load(); n != 0 {
			t.Fatalf("%d release(s) done before the gate opened", n)
		}
		if err := coll2(t, b, "c").Create("pot", map[string]any{"price": 20}); err != nil {
			t.Fatal(err)
		}
		close(store.gate)
		mustSync(t, b, "p") // takes the lease A gave back
		mustSync(t, a, "p")
		synctest.Wait()
		if n := store.released.Load(); n != 2 {
			t.Fatalf("%d releases done, want 2 (A's first sync and B's; A's second had nothing to push)", n)
		}
		var got map[string]any
		if err := coll2(t, a, "c").Get("pot", &got); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

// A device on disk closed while a manual Sync is between its push and the
// fsync that lets its cursor skip its own entries: the Sync returns
// ErrClosed or context.Canceled, the edit it pushed is in the relay, and
// nothing else runs on the closed store. The Sync fsynced through the store and syncer Close
// had closed: with the syncer fsyncing through Badger (as on macOS, iOS
// and Windows), the process ended (SIGSEGV in Badger's SyncWAL); on Linux
// it leaked a file handle, and -race saw the two race.
func TestCloseDuringSync(t *testing.T) {
	direct := badgerdir.FsyncLogsDirect
	badgerdir.FsyncLogsDirect = false
	t.Cleanup(func() { badgerdir.FsyncLogsDirect = direct })
	rl := relaytest.Start(t, &relaytest.Options{Pipe: true})
	o := &Options{HTTPClient: rl.HTTPClient, TokenSource: StaticToken(rl.Token)}
	r := open(t, t.TempDir(), o)
	if err := r.AddProfile(Profile{Name: "p", URL: rl.URL, APIKey: rl.App.APIKey,
		Mode: policy.Manual, Type: policy.TwoWay, Collections: []string{"c"}, Timeout: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := r.Sync(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if err := coll2(t, r, "c").Put("x", map[string]any{"i": int64(1)}); err != nil {
		t.Fatal(err)
	}
	reached, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	ownMovedSyncing = func() { once.Do(func() { close(reached); <-resume }) }
	t.Cleanup(func() { ownMovedSyncing = nil })
	errc := make(chan error, 1)
	go func() {
		_, err := r.Sync(ctx, "p")
		errc <- err
	}()
	select {
	case <-reached:
	case err := <-errc:
		t.Fatalf("the sync ended (%v) without its push moving its cursor: the test sees nothing", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	close(resume)
	// Close cancels what a sync is doing, then closes the store.
	if err := <-errc; !errors.Is(err, ErrClosed) && !errors.Is(err, context.Canceled) {
		t.Fatalf("a sync closed under: %v, want ErrClosed or context.Canceled", err)
	}
	if h, err := rl.Store.Head(ctx, relay.Coll{Tenant: rl.App.ID, Collection: "c"}); err != nil || h != 1 {
		t.Fatalf("relay log head %d, %v: the pushed edit is not there", h, err)
	}
}
