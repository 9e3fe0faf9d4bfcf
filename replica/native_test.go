package replica

import (
	"fmt"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// Every five hundred record writes, the writer that crosses the mark
// releases native memory, with every lock released: the release may
// write to the very records just written without deadlock.
func TestNativeReleasedEveryFiveHundredWrites(t *testing.T) {
	r := open(t, "", &Options{InMemory: true})
	c := r.Collection("c")
	releases := 0
	release := func() {
		releases++
		// A write to a record of the unit that crossed the mark: it
		// would wait forever for a lock still held.
		if err := c.Put("r0099", map[string]any{"released": releases}); err != nil {
			t.Error(err)
		}
	}
	r.mem.collect, r.mem.collectGC = release, release
	for u := range 25 {
		err := r.Write(func(tx *Tx) error {
			for i := range 100 {
				if err := tx.Put("c", fmt.Sprintf("r%04d", u*100+i), map[string]any{"n": i}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if releases != 5 {
		t.Fatalf("%d releases after 2,500 writes (and the releases' own), want 5", releases)
	}
	r.mem.collect = func() {} // Close's own
	crdt.ReleaseNative()      // the real one runs
}

// A release gives memory back to the operating system (a scavenge of the
// Go heap and a trim of the C allocator, whose pages the next writes
// fault back in) only once the process's anonymous memory grew by
// nativeSlack since the last one did; below, it only collects, so that
// automerge-go's results are freed for the next writes to reuse. Small
// units' releases, beside their writers, do the same.
func TestNativeReleasedFullOnlyPastTheSlack(t *testing.T) {
	r := open(t, "", &Options{InMemory: true})
	c := r.Collection("c")
	var anon int64 = 100 << 20
	full, gc, smallTrims := 0, 0, 0
	r.mem.resident = func() int64 { return anon }
	r.mem.collect = func() { full++ }
	r.mem.collectGC = func() { gc++ }
	r.mem.trimSmall = func() { smallTrims++ }
	unit := func() {
		t.Helper()
		err := r.Write(func(tx *Tx) error {
			for i := range nativeEvery {
				if err := tx.Put("c", fmt.Sprintf("r%04d", i), map[string]any{"n": i}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	r.mem.writes.Store(0)
	steps := []struct {
		grow     int64
		full, gc int
	}{
		{0, 1, 0},                 // the first release is full
		{nativeSlack / 2, 1, 1},   // grown less than the slack: collected only
		{nativeSlack/2 - 1, 1, 2}, // still less, from the last full release
		{1, 2, 2},                 // the slack reached: full
		{-nativeSlack, 2, 3},      // shrunk: nothing to gain
		{2*nativeSlack - 1, 2, 4}, // back below the slack past the last full release
		{1, 3, 4},                 // reached
	}
	for i, s := range steps {
		anon += s.grow
		unit()
		if full != s.full || gc != s.gc {
			t.Fatalf("step %d (grown %d MiB): %d full releases and %d collections, want %d and %d",
				i, s.grow>>20, full, gc, s.full, s.gc)
		}
	}
	// Small units: their releases run beside them.
	ran := make(chan struct{}, 1)
	r.mem.collectGC = func() { gc++; ran <- struct{}{} }
	r.mem.trimSmall = func() { smallTrims++; ran <- struct{}{} }
	small := func() {
		t.Helper()
		for i := range nativeEvery {
			if err := c.Put("a", map[string]any{"n": i}); err != nil {
				t.Fatal(err)
			}
		}
		<-ran
	}
	r.mem.writes.Store(0)
	small()
	if smallTrims != 0 || gc != 5 {
		t.Fatalf("a small unit's release below the slack trimmed %d times, collected %d, want 0 and 5", smallTrims, gc)
	}
	anon += nativeSlack
	small()
	if smallTrims != 1 || gc != 5 || full != 3 {
		t.Fatalf("a small unit's release past the slack: %d trims, %d collections, %d full releases, want 1, 5, 3", smallTrims, gc, full)
	}
	r.mem.collect = func() {} // Close's own
}

// Where the process's memory cannot be read, every release is full, as
// before there was a slack.
func TestNativeReleasedFullWithoutResidentMemory(t *testing.T) {
	r := open(t, "", &Options{InMemory: true})
	full, gc := 0, 0
	r.mem.resident = func() int64 { return -1 }
	r.mem.collect = func() { full++ }
	r.mem.collectGC = func() { gc++ }
	r.mem.writes.Store(0)
	for range 3 {
		r.mem.wrote(nativeEvery)
	}
	if full != 3 || gc != 0 {
		t.Fatalf("%d full releases, %d collections, want 3 and 0", full, gc)
	}
	r.mem.collect = func() {}
}

// A scan and an index build collect garbage every readEvery records they
// read, between pages (a collection inside a page's transaction would
// wait on nothing, but one under the build's record locks would hold up
// writers), and the collection may write: no lock is held.
func TestReadsCollectedEveryReadEvery(t *testing.T) {
	r := open(t, "", &Options{InMemory: true})
	c := r.Collection("c")
	err := r.Write(func(tx *Tx) error {
		for i := range 3 * scanPage {
			if err := tx.Put("c", fmt.Sprintf("r%04d", i), map[string]any{"n": i, "k": fmt.Sprint(i % 7)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	collected := 0
	r.mem.readEvery = scanPage
	r.mem.reads.Store(0)
	r.mem.collectRead = func() {
		collected++
		if err := c.Put("r0000", map[string]any{"n": -collected}); err != nil {
			t.Error(err)
		}
	}
	n := 0
	for _, err := range c.Scan(ScanOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	// Three full pages, a collection after each; a fourth, empty, ends
	// the scan.
	if n != 3*scanPage || collected != 3 {
		t.Fatalf("a scan of %d records collected %d times, want 3", n, collected)
	}
	collected = 0
	r.mem.reads.Store(0)
	if err := c.EnsureIndex("by_k", IndexOptions{Fields: []string{"k"}}); err != nil {
		t.Fatal(err)
	}
	if collected != 3 {
		t.Fatalf("an index build over %d records collected %d times, want 3", 3*scanPage, collected)
	}
	// A query over the whole index reads page by page too.
	collected = 0
	r.mem.reads.Store(0)
	n = 0
	for _, err := range Select(c, Query[map[string]any]{Index: "by_k"}) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 3*scanPage || collected != 3 {
		t.Fatalf("an index query over %d records collected %d times, want 3", n, collected)
	}
}

// Close collects once the store is closed, so that its memtables and
// block cache do not stay on the heap under a store opened next.
func TestCloseCollects(t *testing.T) {
	r, err := Open("", &Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Collection("c").Put("a", map[string]any{"n": 1}); err != nil {
		t.Fatal(err)
	}
	collected := 0
	r.mem.collect = func() { collected++ }
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if collected != 1 {
		t.Fatalf("Close collected %d times, want 1", collected)
	}
}

// A writer whose unit of work is a record or a few (a live edit) does not
// wait for the release its write makes due: the release runs beside it,
// and is the small one, never the bulk release with its scavenge.
func TestSmallUnitsDoNotWaitForTheRelease(t *testing.T) {
	r := open(t, "", &Options{InMemory: true})
	c := r.Collection("c")
	if err := c.Put("a", map[string]any{"n": 0}); err != nil {
		t.Fatal(err)
	}
	r.mem.writes.Store(0)
	bulk := false
	r.mem.collect = func() { bulk = true }
	started, release := make(chan struct{}), make(chan struct{})
	waited := make(chan bool, 1)
	r.mem.collectSmall = func() {
		close(started)
		select {
		case <-release:
			waited <- false
		case <-time.After(30 * time.Second): // a guard against hanging, not a measure
			waited <- true
		}
	}
	for i := range nativeEvery {
		if err := c.Put("a", map[string]any{"n": i + 1}); err != nil {
			t.Fatal(err)
		}
	}
	if bulk {
		t.Fatal("a single-record write made the bulk release")
	}
	<-started
	// The writer that crossed the mark has returned while its release
	// is held: it did not wait for it.
	close(release)
	if <-waited {
		t.Fatal("the writer waited for the release")
	}
	r.mem.collect = func() {} // Close's own
}
