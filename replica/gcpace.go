package replica

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"sync"
)

// DefaultMemoryHeadroom is Options.MemoryHeadroom's default.
const DefaultMemoryHeadroom = 16 << 20

// gcPacer keeps Go's heap near what is live while replicas are open.
//
// Badger allocates on Go's heap in bursts: a memtable flush builds a
// table from a whole memtable in memory, a compaction several at once,
// reads decompress blocks, and an open verifies every table. Go's
// default pacing (GOGC=100) lets the heap grow to twice what is live
// before it collects, and a device store keeps some 30 MB live while it
// writes (two memtables, a table being built): the process would peak
// well past 100 MB for memory no one uses.
//
// While at least one replica is open, the pacer sets Go's soft memory
// limit (debug.SetMemoryLimit) to what the runtime holds besides its heap,
// plus the heap that was live at the last collection, plus a headroom,
// and moves it after each collection: the heap is collected once it
// grows by the headroom rather than by what is live. The headroom is at
// least a quarter of what is live, so that a process with a large heap
// of its own collects at most four times as often as GOGC=100 would have
// it. Go's own pacing still applies below the limit, and a heap whose
// live part grows is not starved: the limit follows it at the next
// collection.
//
// It leaves the runtime alone when the process set a limit of its own
// (GOMEMLIMIT, or debug.SetMemoryLimit before the first replica opened)
// or turned the collector off (GOGC=off), and it stops for good, leaving
// that limit, if anything else sets one while it runs. When the last
// replica closes, it puts back the limit it found.
type gcPacer struct {
	mu        sync.Mutex
	headrooms []int64 // of the open replicas that pace; the largest applies
	active    bool    // the pacer owns the runtime's limit
	prev      int64   // the limit found when it started
	set       int64   // the limit it last set
	gen       int     // counts starts, so that a stopped chain of updates ends
	updates   int     // counts updates after collections, for tests
	// updated, set by tests, is sent to (without blocking) after each
	// update that follows a collection.
	updated chan struct{}
	// beforeSet, set by tests, runs in an update between reading what is
	// live and setting the limit.
	beforeSet func()
}

var pacer gcPacer

// start counts a replica open with the given headroom (none if not
// positive) and returns what its Close calls, once.
func (p *gcPacer) start(headroom int64) (stop func()) {
	if headroom <= 0 {
		return func() {}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.headrooms = append(p.headrooms, headroom)
	if len(p.headrooms) == 1 {
		p.prev = debug.SetMemoryLimit(-1)
		p.active = p.prev == math.MaxInt64 && gcPercent() >= 0
		if p.active {
			p.gen++
			p.set = p.prev
			p.updateLocked()
			p.arm(p.gen)
		}
	}
	var once sync.Once
	return func() { once.Do(func() { p.stop(headroom) }) }
}

func (p *gcPacer) stop(headroom int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, h := range p.headrooms {
		if h == headroom {
			p.headrooms = append(p.headrooms[:i], p.headrooms[i+1:]...)
			break
		}
	}
	if len(p.headrooms) > 0 || !p.active {
		return
	}
	p.active = false
	p.swap(p.prev)
}

// arm has update run after the next garbage collection: a cleanup runs
// once the object it is attached to is found unreachable, which a fresh
// object is at the next collection. It holds a pointer, so that Go's
// tiny allocator does not batch it with objects that live on.
func (p *gcPacer) arm(gen int) {
	type sentinel struct{ _ *int }
	runtime.AddCleanup(&sentinel{}, func(gen int) {
		p.mu.Lock()
		again := p.active && gen == p.gen
		if again {
			again = p.updateLocked()
		}
		if p.updated != nil {
			select {
			case p.updated <- struct{}{}:
			default:
			}
		}
		p.mu.Unlock()
		if again {
			p.arm(gen)
		}
	}, gen)
}

// updateLocked sets the limit from what is live now; it reports false,
// and stops pacing, if someone else changed the limit since it last set
// it.
func (p *gcPacer) updateLocked() bool {
	p.updates++
	target := gcTarget(slices.Max(p.headrooms))
	if p.beforeSet != nil {
		p.beforeSet()
	}
	if !p.swap(target) {
		p.active = false
		return false
	}
	p.set = target
	return true
}

// swap sets the limit to v if it is still the one the pacer last set, and
// reports whether it was. The process may set its own limit at any moment
// (the pacer's lock does not cover it), so the check and the set are one
// call: debug.SetMemoryLimit returns the limit it replaced, and a limit
// that was not the pacer's is put straight back.
func (p *gcPacer) swap(v int64) bool {
	if was := debug.SetMemoryLimit(v); was != p.set {
		debug.SetMemoryLimit(was)
		return false
	}
	return true
}

// gcTarget is the memory limit for a headroom: the runtime's memory
// besides its heap, the heap live at the last collection (grown by the
// heap's fragmentation), and the headroom or a quarter of that heap,
// whichever is larger.
func gcTarget(headroom int64) int64 {
	s := []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	metrics.Read(s)
	v := make([]int64, len(s))
	for i := range s {
		if s[i].Value.Kind() == metrics.KindUint64 {
			v[i] = int64(s[i].Value.Uint64())
		}
	}
	live, total, objects, unused, free, released := v[0], v[1], v[2], v[3], v[4], v[5]
	other := total - objects - unused - free - released // stacks, metadata, buffers
	if objects > 0 {
		live += live * unused / objects
	}
	return other + live + max(headroom, live/4)
}

// gcPercent is GOGC as the runtime has it: negative when the collector
// is off.
func gcPercent() int64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 100
	}
	v := s[0].Value.Uint64()
	if v > math.MaxInt64 {
		return -1
	}
	return int64(v)
}
