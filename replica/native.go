package replica

import (
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/ferrysync/ferry/crdt"
)

// nativeEvery is how many record writes pass between releases of native
// memory. Each write of a small record leaves a few KB of automerge-go
// results for Go's finalizers to free (see crdt.ReleaseNative); five
// hundred writes leave a few MB, and a collection of a Go heap of tens
// of MB costs a few milliseconds, against the tens that five hundred
// writes take.
const nativeEvery = 500

// native releases the memory automerge-go leaves behind every nativeEvery
// record writes: a garbage collection runs the finalizers that free it,
// and crdt.ReleaseNative gives it back to the operating system. Without it, inserting 100,000 records grows the
// process past a gigabyte that no one uses. The collection also returns
// the Go heap's free pages to the operating system at once
// (debug.FreeOSMemory), rather than as Go's scavenger gets to them: a
// bulk insert frees Badger's memtable arenas and table builders, tens of
// MB at a time, which would otherwise stay resident for seconds.
type native struct {
	writes  atomic.Int64
	mu      sync.Mutex // one release at a time
	collect func()     // what a release does; tests count it
}

func newNative() *native {
	return &native{collect: func() { debug.FreeOSMemory(); crdt.ReleaseNative() }}
}

// wrote counts n record writes and, every nativeEvery of them, releases
// native memory on the caller's goroutine, which must hold no lock: the
// writer that crosses the mark waits for the release. Run alongside the
// writers, releases fall behind them, as the finalizers that free the
// memory need the processor the writers keep busy.
func (p *native) wrote(n int) {
	if n <= 0 || p.writes.Add(int64(n)) < nativeEvery {
		return
	}
	p.writes.Store(0)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.collect()
}
