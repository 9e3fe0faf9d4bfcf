package bench

// Tests of the workloads' setup, not of the product: that they measure
// durable stores, that their timers start and stop where their
// descriptions say, and that a relay's wrong answers fail the run rather
// than reach its figures.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/replica"
	"github.com/ferrysync/ferry/transport"
)

// tiny is a config that makes each workload take well under a second.
func tiny(t *testing.T) Config {
	return Config{Records: 12, Updates: 6, History: 10, MergeRecords: 4, Clients: 2, Subscribers: 2, Objects: 2,
		Dir: t.TempDir(), Seed: seed(t)}
}

// hooked sets the test hooks for the rest of the test.
func hooked(t *testing.T, set func()) {
	set()
	t.Cleanup(func() { testHooks = hooks{} })
}

func runTiny(t *testing.T, cfg Config, names ...string) []*Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg, names...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestStoresDurable: every replica and every relay store the workloads
// open is on disk and durable (fsync on commit), as their figures say.
func TestStoresDurable(t *testing.T) {
	var mu sync.Mutex
	var replicas []string
	relays := 0
	hooked(t, func() {
		testHooks.openedReplica = func(name string, _ *replica.Replica, o *replica.Options) {
			mu.Lock()
			defer mu.Unlock()
			replicas = append(replicas, name)
			if o.Relaxed || o.InMemory {
				t.Errorf("replica %s opened relaxed %v, in memory %v", name, o.Relaxed, o.InMemory)
			}
		}
		testHooks.openedRelay = func(o *badgerstore.Options) {
			mu.Lock()
			defer mu.Unlock()
			relays++
			if o.Relaxed || o.InMemory {
				t.Errorf("relay store opened relaxed %v, in memory %v", o.Relaxed, o.InMemory)
			}
		}
	})
	runTiny(t, tiny(t), "W1", "W2", "W3", "W4", "W7")
	// W1: writer and fresh; W2 and W3: a and b. W4 and W7 use raw clients.
	if len(replicas) != 6 || relays != 5 {
		t.Errorf("opened replicas %v and %d relays, want 6 and 5: a workload opened a store some other way", replicas, relays)
	}
}

// TestW2Timer: each W2 update is timed from before A's Update until B
// holds A's change, and A's commit from the same start until the Update
// returned.
func TestW2Timer(t *testing.T) {
	reps := map[string]*replica.Replica{}
	heads := func(name string) crdt.Heads {
		r := reps[name]
		p, err := r.Profile(profileName)
		if err != nil {
			t.Fatal(err)
		}
		h, err := r.Collection(p.Collections[0]).Heads(w2Record)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	var atStart crdt.Heads
	var starts, commits, stops int
	hooked(t, func() {
		testHooks.openedReplica = func(name string, r *replica.Replica, _ *replica.Options) { reps[name] = r }
		testHooks.edge = func(span string, start bool) {
			switch {
			case span == spanW2Update && start:
				starts++
				atStart = heads("a")
				if b := heads("b"); !b.Equal(atStart) {
					t.Errorf("update %d timed from after A changed the record (A %v, B %v)", starts, atStart, b)
				}
			case span == spanW2Commit:
				commits++
				if heads("a").Equal(atStart) {
					t.Errorf("A's commit %d timed to before A's Update made its change", commits)
				}
			case span == spanW2Update:
				stops++
				a, b := heads("a"), heads("b")
				if a.Equal(atStart) || !b.Equal(a) {
					t.Errorf("update %d timed to before B had A's change (A %v, B %v, at start %v)", stops, a, b, atStart)
				}
			}
		}
	})
	cfg := tiny(t)
	runTiny(t, cfg, "W2")
	if want := cfg.Updates + w2Warmup; starts != want || commits != want || stops != want {
		t.Errorf("%d starts, %d commits, %d stops; want %d each", starts, commits, stops, want)
	}
}

// TestW3Timer: W3's merge time runs from before the first sync, when the
// replicas differ, until the last sync, after which they are the same.
func TestW3Timer(t *testing.T) {
	cfg := tiny(t)
	reps := map[string]*replica.Replica{}
	same := func() bool {
		p, err := reps["a"].Profile(profileName)
		if err != nil {
			t.Fatal(err)
		}
		ids := make([]string, cfg.MergeRecords)
		for i := range ids {
			ids[i] = fmt.Sprintf("rec-%05d", i)
		}
		ok, err := sameHeads(reps["a"], reps["b"], p.Collections[0], ids)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	var spans []bool // whether the replicas were the same at each edge
	hooked(t, func() {
		testHooks.openedReplica = func(name string, r *replica.Replica, _ *replica.Options) { reps[name] = r }
		testHooks.edge = func(span string, start bool) {
			if span == spanW3Sync {
				spans = append(spans, same())
			}
		}
	})
	res := runTiny(t, cfg, "W3")
	syncs, _ := res[1].Metric("syncs")
	if len(spans) != 2*int(syncs.Value) || len(spans) < 6 {
		t.Fatalf("%d timed edges for %v syncs", len(spans), syncs.Value)
	}
	if spans[0] || !spans[len(spans)-1] {
		t.Errorf("same heads at the first sync's start %v (want false) and at the last's stop %v (want true)", spans[0], spans[len(spans)-1])
	}
}

// TestW4RefusesWrongAcks: W4 fails, and reports nothing, when the relay's
// acknowledgements or its accepted counter say a change pushed was not
// appended once.
func TestW4RefusesWrongAcks(t *testing.T) {
	for _, c := range []struct {
		name  string
		hooks func()
	}{
		{"every push at one log position", func() {
			testHooks.ack = func(a *transport.Ack) { a.Seq = uint64(len(a.Records)) }
		}},
		{"a position skipped", func() {
			testHooks.ack = func(a *transport.Ack) { a.Seq *= 2 }
		}},
		{"other heads acknowledged", func() {
			testHooks.ack = func(a *transport.Ack) { a.Records[0].Heads = [][]byte{make([]byte, 32)} }
		}},
		{"a change not counted as accepted", func() {
			testHooks.scraped = func(m map[string]float64) {
				if m[mAccepted] > 0 {
					m[mAccepted]--
				}
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			hooked(t, c.hooks)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			res, err := W4(ctx, tiny(t))
			if !errors.Is(err, errCheck) || res != nil {
				t.Fatalf("W4 = %v, %v; want a failed check", res, err)
			}
		})
	}
}

// TestW7RefusesWrongAcks: W7 fails, and reports nothing, when an ack
// names other heads than those pushed, or the relay's accepted counter
// misses a change.
func TestW7RefusesWrongAcks(t *testing.T) {
	for _, c := range []struct {
		name  string
		hooks func()
	}{
		{"other heads acknowledged", func() {
			var n atomic.Int64 // the pushers call the hook concurrently
			testHooks.ack = func(a *transport.Ack) {
				if n.Add(1) == 3 { // an edit's
					a.Records[0].Heads = [][]byte{make([]byte, 32)}
				}
			}
		}},
		{"a change not counted as accepted", func() {
			testHooks.scraped = func(m map[string]float64) {
				if m[mAccepted] > 0 {
					m[mAccepted]--
				}
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			hooked(t, c.hooks)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			res, err := W7(ctx, tiny(t))
			if !errors.Is(err, errCheck) || res != nil {
				t.Fatalf("W7 = %v, %v; want a failed check", res, err)
			}
		})
	}
}

// TestW7Timer: W7's create phase is timed from before the first push
// until every record's creation is acknowledged (durable), and its edit
// phase from after that until every edit is.
func TestW7Timer(t *testing.T) {
	var mu sync.Mutex
	acks := 0
	var at []int // acks at each edge
	hooked(t, func() {
		testHooks.ack = func(*transport.Ack) { mu.Lock(); acks++; mu.Unlock() }
		testHooks.edge = func(span string, start bool) {
			if span == spanW7Create || span == spanW7Edit {
				mu.Lock()
				at = append(at, acks)
				mu.Unlock()
			}
		}
	})
	cfg := tiny(t)
	runTiny(t, cfg, "W7")
	n := cfg.Objects
	if want := []int{0, n, n, n + n*w7Edits}; !slices.Equal(at, want) {
		t.Fatalf("acks at the phases' edges %v, want %v", at, want)
	}
}

// TestFloorRuns: a floor is the median of floorRuns timed runs, after one
// untimed warm-up run, however slow the first run is.
func TestFloorRuns(t *testing.T) {
	times := []time.Duration{900, 5, 1, 4, 2, 3} // the first is the cold one
	calls := 0
	runs, err := timeRuns(context.Background(), func() (time.Duration, error) {
		calls++
		return times[calls-1], nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if calls != floorRuns+1 || len(runs) != floorRuns {
		t.Fatalf("%d calls, %d runs kept; want %d and %d", calls, len(runs), floorRuns+1, floorRuns)
	}
	for _, d := range runs {
		if d == 900 {
			t.Fatal("the warm-up run was kept")
		}
	}
	if m := median(runs); m != 3 {
		t.Fatalf("median %v, want 3", m)
	}
}

// TestFanoutFromSend: W4's fan-out of a record runs from its push's send
// to the last subscriber's receipt, and a receipt before the send fails
// the run rather than count as 0.
func TestFanoutFromSend(t *testing.T) {
	w := &w4Run{
		sent: []int64{100, 200},
		subs: []*subscriber{{recv: []int64{150, 260}}, {recv: []int64{180, 230}}},
	}
	got, err := w.fanout(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	if want := []time.Duration{60, 80}; !slices.Equal(got, want) {
		t.Fatalf("fan-out %v, want %v", got, want)
	}
	w.sent[1] = 300
	if _, err := w.fanout(0, 2); !errors.Is(err, errCheck) {
		t.Fatalf("a receipt before the send: %v, want a failed check", err)
	}
}

// TestEditFloorChecksApplied: an edit floor fails if automerge-go did not
// apply an edit (one whose dependency it lacks is kept aside, without an
// error), rather than time less work than the workload does.
func TestEditFloorChecksApplied(t *testing.T) {
	d, err := crdt.New(actorID(1, 2))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	if err := d.Put(products(1, 2, 1)[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Commit("", editAt); err != nil {
		t.Fatal(err)
	}
	base := d.Save()
	var edits []edit
	for i := range 2 {
		data, err := editor{d}.set("qty", i)
		if err != nil {
			t.Fatal(err)
		}
		edits = append(edits, edit{0, data})
	}
	if _, err := applyEdits(editSet{base: [][]byte{base}, edits: edits}); err != nil {
		t.Fatalf("both edits: %v", err)
	}
	if _, err := applyEdits(editSet{base: [][]byte{base}, edits: edits[1:]}); !errors.Is(err, errCheck) {
		t.Fatalf("the second edit without the first: %v, want a failed check", err)
	}
}
