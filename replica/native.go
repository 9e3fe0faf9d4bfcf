package replica

import (
	"runtime"
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

// nativeSmallUnit is the size of a unit of work below which the writer
// that crosses nativeEvery does not wait for the release (see wrote).
const nativeSmallUnit = 8

// native releases the memory automerge-go leaves behind every nativeEvery
// record writes: a garbage collection runs the finalizers that free it,
// and crdt.ReleaseNative gives it back to the operating system. Without it, inserting 100,000 records grows the
// process past a gigabyte that no one uses. The collection also returns
// the Go heap's free pages to the operating system at once
// (debug.FreeOSMemory), rather than as Go's scavenger gets to them: a
// bulk insert frees Badger's memtable arenas and table builders, tens of
// MB at a time, which would otherwise stay resident for seconds.
//
// Reads are paced too (read): a scan or an index build over a large
// collection allocates a few KB of garbage per record (read models
// copied out of Badger, their fields unpacked, index keys), and with no
// collection forced Go lets its heap grow to twice what is live before
// it collects, Badger's memtables and block cache included: tens of MB
// above what the inserts needed, held by the process long after.
type native struct {
	writes  atomic.Int64
	mu      sync.Mutex // one release at a time
	collect func()     // what a release does; tests count it

	// collectSmall is what a release crossed by a small unit of work
	// does (see wrote), on a goroutine of its own, one at a time
	// (smallRunning).
	collectSmall func()
	smallRunning atomic.Bool

	reads       atomic.Int64
	readEvery   int64  // records read between read collections
	collectRead func() // what a read collection does; tests count it
}

// nativeReadEvery is how many records a scan reads between collections,
// and so the garbage the heap may gain before one: 32,768 records leave
// some 20 MB and take some 100 ms to read, against a collection of some
// 10 ms on a heap that holds a store's memtables and block cache. Each
// collection costs a scan time (one every 4,096 records cost a full
// scan a quarter of its time), each record between them memory. An
// index build leaves more garbage per record than a scan (it lists the
// record's key, reads its read model and writes its entry, which fills
// memtables) and takes longer to read it: its records count eight times
// (buildWeight), a collection every 4,096, which keeps a build over
// 100,000 records near the memory of the inserts that made them.
const nativeReadEvery = 32768

// buildWeight is how many reads each record an index build goes through
// counts for.
const buildWeight = 8

func newNative() *native {
	return &native{
		collect:      func() { debug.FreeOSMemory(); crdt.ReleaseNative() },
		collectSmall: func() { runtime.GC(); crdt.ReleaseNative() },
		readEvery:    nativeReadEvery,
		collectRead:  runtime.GC,
	}
}

// read counts n records read by a scan or an index build and, every
// readEvery of them, runs a garbage collection on the caller's
// goroutine, which must hold no lock and no transaction open. Reads
// load no Automerge document, so there is no native memory to release;
// the collection keeps the Go heap near what is live.
func (p *native) read(n int) {
	if n <= 0 || p.reads.Add(int64(n)) < p.readEvery {
		return
	}
	p.reads.Store(0)
	p.collectRead()
}

// wrote counts n record writes and, every nativeEvery of them, releases
// native memory on the caller's goroutine, which must hold no lock: the
// writer that crosses the mark waits for the release. Run alongside the
// writers, releases fall behind them, as the finalizers that free the
// memory need the processor the writers keep busy.
//
// A unit of work of fewer than nativeSmallUnit records (a live edit, an
// app's single writes) does not wait: it is one of five hundred, each
// leaving a few KB, and the release runs beside the writer, which goes on.
// That release returns no heap pages at once (debug.FreeOSMemory's
// scavenge of the whole heap was most of what such a writer waited for,
// and small units free no memtable arenas): Go's scavenger returns them.
func (p *native) wrote(n int) {
	if n <= 0 || p.writes.Add(int64(n)) < nativeEvery {
		return
	}
	p.writes.Store(0)
	if n < nativeSmallUnit {
		if p.smallRunning.CompareAndSwap(false, true) {
			go func() {
				defer p.smallRunning.Store(false)
				p.collectSmall()
			}()
		}
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.collect()
}
