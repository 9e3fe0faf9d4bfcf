package replica

import (
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestValueLogGCRunsEveryInterval leaves a store whose value log is mostly
// old read models (see rewriteReadModels) and never runs the GC by hand.
// Opened with GCInterval -1, nothing reclaims them; opened with the
// default interval (10 minutes), the background GC rewrites the log at
// the first interval, not before, and the record reads back whole. The
// opens run in a synctest bubble, so the intervals pass on its clock; the
// GC's log line ("value log GC", logged once it has rewritten a file) is
// the event waited for.
func TestValueLogGCRunsEveryInterval(t *testing.T) {
	dir := t.TempDir()
	// A read model of 200 KB is past the value threshold (78 KiB with
	// these memtables) and a fifth as slow to rewrite as max_record's.
	rng := rand.New(rand.NewPCG(3, 4))
	rec := maxRec{Body: make([]byte, 200_000), Tag: "v0"}
	for i := range rec.Body {
		rec.Body[i] = byte(rng.Uint32())
	}
	edits := rewriteReadModels(t, dir, &Options{memTableSize: 4 << 20, GCInterval: -1}, rec)
	before := vlogBytes(t, dir)
	const every = 10 * time.Minute // the documented default
	synctest.Test(t, func(t *testing.T) {
		// gcOpen opens the store with GCInterval gc, and a channel
		// closed once the background GC has rewritten a file.
		gcOpen := func(gc time.Duration) (*Replica, chan struct{}) {
			ran := make(chan struct{})
			h := onMessage{msg: "value log GC", once: &sync.Once{}, f: func() { close(ran) }}
			return open(t, dir, &Options{memTableSize: 4 << 20, GCInterval: gc, Logger: slog.New(h)}), ran
		}
		closeStore := func(r *Replica) {
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
		}

		// Twice the default: off must not mean the default.
		r, ran := gcOpen(-1)
		time.Sleep(2 * every)
		select {
		case <-ran:
			t.Fatal("the value log was garbage-collected with GCInterval -1")
		default:
		}
		closeStore(r)
		if n := vlogBytes(t, dir); n < before {
			t.Fatalf("value log: %d bytes before, %d after %v with GCInterval -1", before, n, 2*every)
		}

		r, ran = gcOpen(0)
		start := time.Now()
		time.Sleep(every - time.Second)
		select {
		case <-ran:
			t.Fatalf("the value log GC ran after %v, before its interval of %v", time.Since(start), every)
		default:
		}
		select {
		case <-ran:
		case <-time.After(time.Minute):
			t.Fatalf("no value log GC in %v with an interval of %v", time.Since(start), every)
		}
		var got maxRec
		if err := r.Collection("c").Get("big", &got); err != nil || !bytes.Equal(got.Body, rec.Body) || got.Tag != fmt.Sprintf("v%d", edits) {
			t.Fatalf("after the GC: %v, tag %q, body of %d bytes", err, got.Tag, len(got.Body))
		}
		closeStore(r)
		after := vlogBytes(t, dir)
		t.Logf("value log: %d bytes before, %d after the GC at %v", before, after, time.Since(start))
		// Compactions decide what the GC may take: the six opens' index
		// tables compact together either in the last of them (the
		// last open's log, of 8 read models, then stays until the next
		// compaction) or in the first open here (all but the current
		// read model goes).
		if after > before/2 {
			t.Fatalf("value log: %d bytes before the background GC, %d after", before, after)
		}
	})
}
