package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"testing"
	"testing/synctest"
	"time"
)

// TestRelayGoMemoryLimit: the relay sets Go's soft memory limit to half
// its budget while it runs, unless GOMEMLIMIT sets one, which it leaves
// alone.
func TestRelayGoMemoryLimit(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(old)
	t.Setenv("GOMEMLIMIT", "")
	// In a bubble: the relay's goroutines (its memory watchdog, what puts
	// the limit back) are waited for rather than polled.
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		if got := limitProcessMemory(ctx, 256<<20); got != 128<<20 {
			t.Errorf("limit set %d, want %d", got, 128<<20)
		}
		if got := debug.SetMemoryLimit(-1); got != 128<<20 {
			t.Errorf("Go's memory limit is %d, want %d", got, 128<<20)
		}
		cancel()
		synctest.Wait()
		if got := debug.SetMemoryLimit(-1); got != old {
			t.Fatalf("Go's memory limit stayed %d once the relay ended; it was %d", got, old)
		}
	})
	t.Setenv("GOMEMLIMIT", "1GiB")
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if got := limitProcessMemory(ctx, 256<<20); got != 0 {
			t.Errorf("with GOMEMLIMIT set, limit set %d, want none", got)
		}
		if got := debug.SetMemoryLimit(-1); got != old {
			t.Errorf("with GOMEMLIMIT set, Go's memory limit became %d", got)
		}
	})
}

// TestRelayCollectsPastBudget: once the process's resident memory passes
// its budget, the relay collects garbage (which frees automerge-go's C
// memory), less and less often while that does not bring it under, and
// stops when its context ends. It runs in a bubble: the watchdog's timer
// is the bubble's clock, which the sleeps below advance.
func TestRelayCollectsPastBudget(t *testing.T) {
	if residentBytes() == 0 {
		t.Skip("no /proc/self/statm")
	}
	t.Setenv("GOMEMLIMIT", "off") // leave Go's limit alone
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		before := gcCount()
		// A budget far under what the test process takes.
		limitProcessMemory(ctx, 1<<20)
		time.Sleep(5 * time.Second)
		if n := gcCount() - before; n < 2 {
			t.Fatalf("%d collections in 5 s with resident memory over the mark", n)
		}
		cancel()
		synctest.Wait()
		stopped := gcCount()
		time.Sleep(5 * residentGap)
		// Other collections may run (the test's own allocations), but not
		// one every residentGap.
		if n := gcCount() - stopped; n >= 3 {
			t.Errorf("%d collections after the relay stopped", n)
		}
	})
}

func gcCount() uint32 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.NumGC
}
