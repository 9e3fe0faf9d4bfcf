package relay

import (
	"context"
	"errors"
	"runtime"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// docMemory estimates the memory a loaded document takes, by what it holds
// (crdt.Doc.Cost: its operations and changes, calibrated against the
// process's resident memory), never by its stored size, which may be
// hundreds of times smaller. A deferred document (crdt.NewDeferred) counts
// for what it takes until it is built, its ledger (Cost.Current, some
// tenth of the built document for a record of many small objects): so
// the cache holds the records pushes go to checked without Automerge, and
// whoever builds one charges what building adds (see built, and
// merged.entry). A document whose history cannot be indexed falls back on
// its stored size times bytesPerStored, above what any record measured
// took per saved byte. The caller holds the record's lock: a Doc is not
// safe for concurrent use.
func docMemory(d *crdt.Doc, size int) int64 {
	if c, err := d.Cost(); err == nil {
		return c.Current
	}
	return 8<<10 + bytesPerStored*int64(size)
}

// bytesPerStored bounds the memory of a loaded document per byte of its
// saved form (see docs/operations.md, "Memory": 200 to 1,350 measured).
const bytesPerStored = 2048

// free frees the document and gives its memory back to the budget.
func (rd *relayDoc) free() {
	rd.doc.Free()
	rd.grant.release()
}

// busyRetry is the wait a refusal with busy suggests: about what it takes
// pushes in progress to be written and their documents to leave.
const busyRetry = time.Second

// memErr turns a memory budget's refusal into the protocol's answer:
// busy, with the wait to retry after, or shutting_down once the Server
// closes. Other errors pass unchanged.
func memErr(err error, what string) error {
	switch {
	case errors.Is(err, errBusy):
		e := perr(transport.CodeBusy, "the relay's memory is in use (max_memory): %s waited and was not started; nothing was done, retry later", what)
		e.RetryMS = retryMS(busyRetry)
		return e
	case errors.Is(err, errBudgetClosed):
		return perr(transport.CodeShuttingDown, "relay is shutting down")
	}
	return err
}

// releaseLoop gives the memory that documents and pushes freed back to
// the operating system, each time the budget says a fifth of it was
// given back: a garbage collection runs the finalizers that free
// automerge-go's results (which Go's small heap makes rare), then the C
// allocator is trimmed (crdt.ReleaseNative). Without it, the process
// keeps hundreds of MiB past its budget under a flood of pushes. It runs
// until done is closed.
func (s *Server) releaseLoop(freed <-chan struct{}, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case <-freed:
			runtime.GC()
			crdt.ReleaseNative()
		}
	}
}

type pushGrantKey struct{}

// withPushGrant carries a push's memory grant to where its changes are
// merged (see memGrant.moveTo).
func withPushGrant(ctx context.Context, g *memGrant) context.Context {
	return context.WithValue(ctx, pushGrantKey{}, g)
}

// pushGrant is the grant withPushGrant put in ctx, or nil.
func pushGrant(ctx context.Context) *memGrant {
	g, _ := ctx.Value(pushGrantKey{}).(*memGrant)
	return g
}

// loadCounted loads a stored record's document within the memory budget:
// it waits for room for what the record is estimated to cost (see
// crdt.Estimate; by its stored size, as bytesPerStored bounds it, if its
// bytes do not count), or, unless wait, refuses with busy at once if
// there is none. The grant it returns holds the document's cost once
// loaded (exact if exact, else the estimate), until released. load loads
// it (loadStored, or loadDeferred: loading a snapshot takes what the built
// document takes until it is indexed and freed, so the estimate is
// reserved for either, and exact then counts a deferred document for its
// ledger alone).
func (s *Server) loadCounted(ctx context.Context, c Coll, rec Record, exact, wait bool, load func(Coll, Record) (*crdt.Doc, error)) (*crdt.Doc, *memGrant, error) {
	data := rec.Data()
	est := 8<<10 + bytesPerStored*int64(len(data))
	if e, err := crdt.Estimate(data, nil); err == nil {
		est = e.Bytes
	}
	var g *memGrant
	var err error
	if wait {
		g, err = s.mem.acquire(ctx, est)
	} else if g, _ = s.mem.tryAcquire(est); g == nil {
		err = errBusy
	}
	if err != nil {
		return nil, nil, memErr(err, "loading a record")
	}
	d, err := load(c, rec)
	if err != nil {
		g.release()
		return nil, nil, err
	}
	if exact {
		g.set(docMemory(d, len(data)))
	}
	return d, g, nil
}
