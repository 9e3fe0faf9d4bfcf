package replica

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay/relaytest"
)

func TestPeriodicSyncRunsEveryInterval(t *testing.T) {
	r := mem(t)
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		s := &scheduler{r: r, sync: func(ctx context.Context, p *Profile) (*SyncStats, error) {
			calls.Add(1)
			return &SyncStats{}, nil
		}}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { s.periodic(ctx, &Profile{Name: "p", Interval: time.Minute}); close(done) }()

		synctest.Wait()
		if n := calls.Load(); n != 1 {
			t.Fatalf("%d syncs at start, want 1", n)
		}
		time.Sleep(150 * time.Second) // fake time inside the bubble
		synctest.Wait()
		if n := calls.Load(); n != 3 {
			t.Fatalf("%d syncs after 2.5 intervals, want 3", n)
		}
		cancel()
		<-done
	})
}

func TestBackoffGrowsWithJitterAndCaps(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: 2 * time.Second}
	prevCeil := time.Duration(0)
	for i := 0; i < 10; i++ {
		ceil := min(b.min<<i, b.max)
		d := b.next()
		if d < ceil/2 || d > ceil {
			t.Fatalf("attempt %d: %v outside [%v, %v]", i, d, ceil/2, ceil)
		}
		if ceil < prevCeil {
			t.Fatal("ceiling shrank")
		}
		prevCeil = ceil
	}
	b.reset()
	if d := b.next(); d > b.min {
		t.Fatalf("after reset: %v", d)
	}
}

// settleWithRelay waits, in a synctest bubble, until every goroutine is
// blocked and no timer of the relay's can wake one: a relay's group commit
// may wait (a millisecond) for more pushes, on a timer, which
// synctest.Wait counts as blocked. The sleep moves the bubble's fake clock
// past any such wait; it costs no real time.
func settleWithRelay() {
	synctest.Wait()
	time.Sleep(10 * time.Millisecond)
	synctest.Wait()
}

// Live profiles push each edit and apply each remote one by themselves,
// and concurrent live edits of one field converge. In a synctest bubble on
// relaytest's in-memory network: "settled" is every goroutine blocked and
// every relay timer run (settleWithRelay).
func TestLiveModePushesAndAppliesAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rl := relaytest.Start(t, &relaytest.Options{Pipe: true})
		opts := Options{BackoffMin: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond}
		a, b := pipeDevice(t, rl, opts, ""), pipeDevice(t, rl, opts, "")
		feed := coll2(t, b, "c").Watch(100)
		defer feed.Close()
		for _, r := range []*Replica{a, b} {
			p, _ := r.Profile("p")
			p.Mode = policy.Live
			if err := r.UpdateProfile(p); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		ca := coll2(t, a, "c")
		for i := 0; i < 5; i++ {
			if err := ca.Put("x", map[string]any{"n": i}); err != nil {
				t.Fatal(err)
			}
			// b sees each edit without anyone calling Sync.
			settleWithRelay()
			if f := getFields(t, b, "c", "x"); f["n"] != int64(i) {
				t.Fatalf("b has %v after edit %d", f, i)
			}
		}
		// Concurrent live edits of one field converge.
		cb := coll2(t, b, "c")
		ca.Update("x", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, 100) })
		cb.Update("x", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, 200) })
		settleWithRelay()
		fa, fb := getFields(t, a, "c", "x"), getFields(t, b, "c", "x")
		pa, _ := ca.PendingCount()
		pb, _ := cb.PendingCount()
		if !crdt.Equal(fa, fb) || pa != 0 || pb != 0 {
			t.Fatalf("live replicas did not converge: %v vs %v (pending %d, %d)", fa, fb, pa, pb)
		}
		var remote int
		for len(feed.C) > 0 {
			if ev := <-feed.C; ev.Origin == Remote {
				remote++
			}
		}
		if remote < 5 {
			t.Fatalf("b's feed got %d remote events, want at least 5", remote)
		}
	})
}
