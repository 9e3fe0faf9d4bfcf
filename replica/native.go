package replica

import (
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/procmem"
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

// nativeSlack is how much the process's anonymous resident memory may
// grow past what it was after the last full release before a release
// gives memory back to the operating system again (see release). A unit
// of 500 small records touches some 18 MiB of the C allocator's memory
// again after a trim (automerge-go's results, some 22 KB a record, wait
// for a collection; the allocator spreads them), and every page a trim or
// a scavenge returns, the next writes fault back in: 200 such releases
// took 11 s of a 100,000-record insert that took 9 without them. Past
// the slack, something besides one unit's work grew, and the release
// is worth its faults.
const nativeSlack = 24 << 20

// native releases the memory automerge-go leaves behind every nativeEvery
// record writes: a garbage collection runs the finalizers that free it.
// Without it, inserting 100,000 records grows the process past a
// gigabyte that no one uses. When the process's anonymous memory grew
// by nativeSlack since the last full release, the release is full: it
// also returns the Go heap's free pages to the operating system at once
// (debug.FreeOSMemory), rather than as Go's scavenger gets to them (a
// bulk insert frees Badger's memtable arenas and table builders, tens of
// MB at a time, which would otherwise stay resident for seconds), and
// crdt.ReleaseNative gives the C allocator's free memory back. Below the
// slack, what a full release would return is mostly what the next writes
// take again.
//
// Reads are paced too (read): a scan or an index build over a large
// collection allocates a few KB of garbage per record (read models
// copied out of Badger, their fields unpacked, index keys), and with no
// collection forced Go lets its heap grow to twice what is live before
// it collects, Badger's memtables and block cache included: tens of MB
// above what the inserts needed, held by the process long after.
type native struct {
	writes atomic.Int64
	mu     sync.Mutex // one release at a time; guards base

	// collect is a full release (Close's, and wrote's past the slack);
	// collectGC what wrote's release does below it. Tests count them.
	collect   func()
	collectGC func()
	// resident reads the process's anonymous resident memory (negative
	// where it cannot: every release is then full); base is what it
	// read after the last full release (negative before the first).
	resident func() int64
	base     int64

	// collectSmall is what a release crossed by a small unit of work
	// does (see wrote), on a goroutine of its own, one at a time
	// (smallRunning); trimSmall is what it does past the slack.
	collectSmall func()
	trimSmall    func()
	smallRunning atomic.Bool

	reads       atomic.Int64
	readEvery   int64  // records read between read collections
	collectRead func() // what a read collection does; tests count it

	// pages, if set, runs after each release: it drops the store's
	// table pages from resident memory (see Replica.releasePages). Not
	// after read collections: a scan or an index build reads each block
	// once anyway, and released there, the blocks a query reads next
	// fault back in (an indexed query right after an index build took
	// 5 to 8 ms instead of 1 to 2, the build a tenth more CPU).
	pages func()
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
	p := &native{
		collect:     func() { debug.FreeOSMemory(); crdt.ReleaseNative() },
		collectGC:   runtime.GC,
		trimSmall:   func() { runtime.GC(); crdt.ReleaseNative() },
		resident:    anonResident,
		base:        -1,
		readEvery:   nativeReadEvery,
		collectRead: runtime.GC,
	}
	p.collectSmall = func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.release(p.trimSmall)
	}
	return p
}

// release runs full if the process's anonymous memory grew by
// nativeSlack or more since the last full release (or cannot be read),
// else only a collection, which runs the finalizers that free
// automerge-go's results for the next writes to reuse. The memory is
// read before the collection: neither it nor the frees of the
// finalizers it runs give pages back. The caller holds p.mu.
func (p *native) release(full func()) {
	if now := p.resident(); now >= 0 && p.base >= 0 && now-p.base < nativeSlack {
		p.collectGC()
		return
	}
	full()
	p.base = p.resident()
}

// anonResident is the process's anonymous resident memory (its Go heap,
// the C allocator's, stacks): resident pages less those backed by files;
// -1 where it cannot be read. Badger's tables mapped whole are
// file-backed, and released on their own (see Replica.releasePages).
func anonResident() int64 {
	u, err := procmem.Read()
	if err != nil {
		return -1
	}
	return u.Anonymous
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
	p.release(p.collect)
	if p.pages != nil {
		p.pages()
	}
}
