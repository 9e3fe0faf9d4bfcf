package main

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/procmem"
)

// What the relay process does to stay near its memory budget (max_memory)
// beyond what the budget counts: Go's heap between collections, and the C
// memory automerge-go frees only in finalizers, which run after a
// collection. See docs/operations.md, "Memory".

// goMemoryLimit is the Go runtime's soft memory limit for a relay whose
// budget is maxMemory, unless GOMEMLIMIT sets one: half the budget. The Go
// heap holds what the budget counts of documents' Go side (their
// operation index) and of pushes being checked, and the garbage of both;
// the limit makes collections come sooner as that garbage grows, rather
// than at twice the live heap.
func goMemoryLimit(maxMemory int64) int64 { return maxMemory / 2 }

// residentCheck is how often the relay looks at its resident memory;
// residentGap the least time between two collections it asks for, and
// residentMaxGap the most: the gap doubles while collections give back
// little (what is over the mark is live; collecting again would not
// help), and comes back once one gives back more, or the process is
// under its mark.
const (
	residentCheck  = 100 * time.Millisecond
	residentGap    = 250 * time.Millisecond
	residentMaxGap = 8 * time.Second
)

// limitProcessMemory sets Go's soft memory limit from maxMemory (unless
// the environment sets GOMEMLIMIT), and, until ctx ends, collects
// garbage and trims the C allocator whenever the process's resident
// memory passes maxMemory: the collection frees Go's garbage and runs the
// finalizers that free automerge-go's C memory, and the trim gives what
// that freed back to the system. The budget counts what work holds; this
// keeps what it let go of from piling up. It returns the Go limit set (0
// if GOMEMLIMIT set one). Go's limit is set back as it was once ctx
// ends, for a relay run inside a larger process (tests).
func limitProcessMemory(ctx context.Context, maxMemory int64) int64 {
	var goLimit int64
	if os.Getenv("GOMEMLIMIT") == "" {
		goLimit = goMemoryLimit(maxMemory)
		old := debug.SetMemoryLimit(goLimit)
		context.AfterFunc(ctx, func() { debug.SetMemoryLimit(old) })
	}
	go func() {
		t := time.NewTicker(residentCheck)
		defer t.Stop()
		var last time.Time
		gap := residentGap
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				if now.Sub(last) < gap {
					continue
				}
				rss := residentBytes()
				if rss <= maxMemory {
					gap = residentGap
					continue
				}
				runtime.GC()
				crdt.ReleaseNative()
				last = time.Now()
				if rss-residentBytes() < maxMemory/32 {
					gap = min(2*gap, residentMaxGap) // little to collect
				} else {
					gap = residentGap
				}
			}
		}
	}()
	return goLimit
}

// residentBytes is the process's resident memory (0 where it cannot be
// read).
func residentBytes() int64 {
	u, _ := procmem.Read()
	return u.Resident
}

// goLimitText is the banner's note of Go's memory limit.
func goLimitText(goLimit int64) string {
	if goLimit == 0 {
		return "Go's memory limit from GOMEMLIMIT"
	}
	return "Go's memory limit " + sizeText(goLimit)
}
