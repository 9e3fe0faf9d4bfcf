package pgstore

import (
	"bytes"
	"context"
	"slices"
	"sync"

	"github.com/ferrysync/ferry/relay"
)

// A relay wakes every live subscriber of a collection at each append, and
// each reads the log after its cursor: usually all the same read, at the
// same moment. Identical reads are coalesced: one that arrives while
// another is waiting to be sent joins it, and one that arrives while
// another is being answered waits, then goes with the next. Every caller's
// answer thus comes from a query sent after it called, as if it had sent
// its own: nothing appended before a wake-up can be missed by the read
// that follows it. Callers get copies, never shared bytes.

type logKey struct {
	c     relay.Coll
	after uint64
	limit int
}

type logResult struct {
	entries []relay.LogEntry
	horizon uint64
	err     error
}

type logFlight struct {
	done chan struct{}
	res  logResult
}

type logCoalescer struct {
	// spawn runs a flight's query on a goroutine of its own, which the
	// Store's Close waits for. It is called by the caller that starts
	// the flight, while the Store admits it.
	spawn func(func())

	mu      sync.Mutex
	pending map[logKey]*logFlight // not sent yet: callers join it
	active  map[logKey]*logFlight // being answered
}

func newLogCoalescer(spawn func(func())) *logCoalescer {
	return &logCoalescer{spawn: spawn, pending: map[logKey]*logFlight{}, active: map[logKey]*logFlight{}}
}

// do returns read's answer for key, from a query that starts after do was
// called, shared with the callers that join it; ctx only bounds this
// caller's wait (read runs to its end for the others).
func (co *logCoalescer) do(ctx context.Context, key logKey, read func() logResult) logResult {
	co.mu.Lock()
	if f := co.pending[key]; f != nil {
		co.mu.Unlock()
		return waitFlight(ctx, f)
	}
	f := &logFlight{done: make(chan struct{})}
	co.pending[key] = f
	prev := co.active[key]
	co.mu.Unlock()
	co.spawn(func() {
		if prev != nil {
			<-prev.done // one query per key at a time
		}
		co.mu.Lock()
		delete(co.pending, key) // from here on, callers start the next flight
		co.active[key] = f
		co.mu.Unlock()
		f.res = read()
		co.mu.Lock()
		if co.active[key] == f {
			delete(co.active, key)
		}
		co.mu.Unlock()
		close(f.done)
	})
	return waitFlight(ctx, f)
}

func waitFlight(ctx context.Context, f *logFlight) logResult {
	select {
	case <-f.done:
	case <-ctx.Done():
		return logResult{err: ctx.Err()}
	}
	r := f.res
	if r.err == nil {
		r.entries = slices.Clone(r.entries)
		for i, e := range r.entries {
			r.entries[i].Changes = bytes.Clone(e.Changes)
			r.entries[i].Heads = slices.Clone(e.Heads)
		}
	}
	return r
}
