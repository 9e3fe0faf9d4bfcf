package replica

import (
	"math"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

// noLimit gives the test a runtime without a memory limit, and puts back
// the one it had after.
func noLimit(t *testing.T) {
	t.Helper()
	pacer.mu.Lock()
	open := len(pacer.headrooms)
	pacer.mu.Unlock()
	if open != 0 {
		t.Fatalf("%d replicas of other tests are still open", open)
	}
	prev := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
}

func limit() int64 { return debug.SetMemoryLimit(-1) }

// afterCollection runs a collection and waits until the pacer has seen
// it, if it is pacing.
func afterCollection(t *testing.T) {
	t.Helper()
	updated := make(chan struct{}, 1)
	pacer.mu.Lock()
	active := pacer.active
	pacer.updated = updated
	pacer.mu.Unlock()
	defer func() {
		pacer.mu.Lock()
		pacer.updated = nil
		pacer.mu.Unlock()
	}()
	if !active {
		runtime.GC()
		return
	}
	// A collection that began before the pacer armed its next sentinel
	// does not run it: each round collects again.
	deadline := time.After(30 * time.Second)
	for {
		runtime.GC()
		select {
		case <-updated:
			return
		case <-deadline:
			t.Fatal("the pacer did not update after a collection")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestPacerFollowsLiveHeap: while a replica is open, Go's memory limit
// is what is live plus the headroom (or a quarter of what is live, if
// more), moving with the live heap; Close puts back no limit.
func TestPacerFollowsLiveHeap(t *testing.T) {
	noLimit(t)
	r, err := Open("", &Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	l0 := limit()
	if l0 == math.MaxInt64 || l0 < DefaultMemoryHeadroom {
		t.Fatalf("limit %d with a replica open, want what is live plus %d", l0, DefaultMemoryHeadroom)
	}
	// A live heap of 256 MiB may grow by a quarter (64 MiB), more than
	// the headroom.
	big := make([]byte, 256<<20)
	for i := 0; i < len(big); i += 4096 {
		big[i] = 1
	}
	afterCollection(t)
	if l := limit(); l < 256<<20+64<<20 {
		t.Fatalf("limit %d with 256 MiB more live, want over %d", l, 256<<20+64<<20)
	}
	runtime.KeepAlive(big)
	big = nil
	afterCollection(t)
	afterCollection(t)
	if l := limit(); l >= 256<<20 {
		t.Fatalf("limit %d after the 256 MiB were freed, want it to come down", l)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if l := limit(); l != math.MaxInt64 {
		t.Fatalf("limit %d after Close, want none", l)
	}
}

// TestPacerLastCloseRestores: with two replicas open, the limit stays
// until the last closes; a replica with a negative headroom does not
// pace.
func TestPacerLastCloseRestores(t *testing.T) {
	noLimit(t)
	off, err := Open("", &Options{InMemory: true, MemoryHeadroom: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	if l := limit(); l != math.MaxInt64 {
		t.Fatalf("limit %d with MemoryHeadroom -1, want none", l)
	}
	a, err := Open("", &Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open("", &Options{InMemory: true, MemoryHeadroom: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	afterCollection(t)
	if l := limit(); l < 64<<20 {
		t.Fatalf("limit %d, want the largest headroom (64 MiB) at least", l)
	}
	b.Close()
	afterCollection(t)
	if l := limit(); l == math.MaxInt64 || l >= 64<<20+DefaultMemoryHeadroom+limitSlack() {
		t.Fatalf("limit %d with one replica left, want it paced by its own headroom", l)
	}
	a.Close()
	if l := limit(); l != math.MaxInt64 {
		t.Fatalf("limit %d after the last Close, want none", l)
	}
}

// limitSlack is what the runtime holds besides live objects, roughly:
// a bound for what a limit may exceed live plus headroom by.
func limitSlack() int64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc + (m.Sys - m.HeapSys))
}

// TestPacerLeavesAppLimit: a limit the process set, before a replica
// opened or while one is open, and a collector turned off, are left as
// they are.
func TestPacerLeavesAppLimit(t *testing.T) {
	noLimit(t)
	const app = 1 << 40
	debug.SetMemoryLimit(app)
	r, err := Open("", &Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	afterCollection(t)
	r.Close()
	if l := limit(); l != app {
		t.Fatalf("limit %d, want the app's %d", l, app)
	}

	debug.SetMemoryLimit(math.MaxInt64)
	r, err = Open("", &Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()           // a failure here leaves no replica open for other tests
	debug.SetMemoryLimit(app) // the app takes over while it is open
	afterCollection(t)
	if l := limit(); l != app {
		t.Fatalf("limit %d after the app set %d while open", l, app)
	}
	r.Close()
	if l := limit(); l != app {
		t.Fatalf("limit %d after Close, want the app's %d", l, app)
	}

	debug.SetMemoryLimit(math.MaxInt64)
	gc := debug.SetGCPercent(-1)
	defer debug.SetGCPercent(gc)
	r, err = Open("", &Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if l := limit(); l != math.MaxInt64 {
		t.Fatalf("limit %d with GOGC=off, want none", l)
	}
}

// TestPacerYieldsToAppMidUpdate: the app may set its own limit while the
// pacer is between reading what is live and setting its limit (the
// pacer runs after a collection, on a goroutine of its own); the app's
// limit stays and the pacer stops.
func TestPacerYieldsToAppMidUpdate(t *testing.T) {
	noLimit(t)
	const app = 1 << 40
	r, err := Open("", &Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	pacer.mu.Lock()
	pacer.beforeSet = func() {
		pacer.beforeSet = nil
		debug.SetMemoryLimit(app)
	}
	pacer.mu.Unlock()
	defer func() {
		pacer.mu.Lock()
		pacer.beforeSet = nil
		pacer.mu.Unlock()
	}()
	afterCollection(t)
	if l := limit(); l != app {
		t.Fatalf("limit %d, want the %d the app set during the pacer's update", l, app)
	}
	pacer.mu.Lock()
	active := pacer.active
	pacer.mu.Unlock()
	if active {
		t.Fatal("the pacer still paces after the app set a limit")
	}
	r.Close()
	if l := limit(); l != app {
		t.Fatalf("limit %d after Close, want the app's %d", l, app)
	}
}
