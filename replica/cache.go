package replica

import (
	"sync"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/lru"
	"github.com/ferrysync/ferry/internal/stripe"
)

// docCache keeps recently used documents loaded, with their meta, up to
// Options.CacheBytes of their estimated memory (docMemory). A cached
// document is only read or changed under its record's stripe lock; one
// that leaves the cache is freed by the reaper, under that lock too.
type docCache struct {
	c *lru.Cache[string, *cacheEntry]
}

type cacheEntry struct {
	doc *crdt.Doc
	m   meta // changed in place only under the record's write lock
	// perStored is what the document was estimated to take in memory
	// when it was loaded (crdt.Estimate: its changes and operations), per
	// byte it then took stored; 0 if it was not loaded from the store.
	perStored float64
}

// size is the entry's memory: by what the document held when loaded,
// grown with what it has taken stored since; by its stored bytes alone
// when that is not known.
func (e *cacheEntry) size() int64 {
	if e.perStored > 0 {
		return max(docBaseBytes, int64(e.perStored*float64(e.m.snapBytes+e.m.chunkBytes)))
	}
	return docMemory(e.m)
}

// A loaded document's memory, estimated from what it takes stored
// (snapshot and chunks), for a document whose content was not counted
// when it was loaded (see cacheEntry.perStored). Measured on typical records (a product row of
// five fields, and the same with a 200-character collaborative text,
// after 0 to 40 edits), a loaded document takes 12 to 270 KB, 20 to 250
// times its stored bytes: history the snapshot compresses well takes
// room once loaded. 8 KiB plus 64 times the stored bytes comes within a
// factor of 3 of each, over or under.
const (
	docBaseBytes      = 8 << 10
	docBytesPerStored = 64
)

func docMemory(m meta) int64 {
	return docBaseBytes + docBytesPerStored*int64(m.snapBytes+m.chunkBytes)
}

// newDocCache returns a cache of maxBytes that hands each document that
// leaves it to left.
func newDocCache(maxBytes int64, left func(key string, d *crdt.Doc)) *docCache {
	return &docCache{c: lru.NewSized(maxBytes, func(key string, e *cacheEntry) { left(key, e.doc) })}
}

// get returns the cached document of a record. The caller holds the
// record's stripe lock and uses the document only while it does.
func (c *docCache) get(key string) (*crdt.Doc, meta, bool) {
	e, ok := c.c.Get(key)
	if !ok {
		return nil, meta{}, false
	}
	return e.doc, e.m, true
}

// put caches a record's document. The caller holds the record's write
// lock.
func (c *docCache) put(key string, d *crdt.Doc, m meta) {
	old, ok := c.c.Peek(key)
	if ok && old.doc == d {
		// The same document, changed: it stays (and its entry, so that it
		// does not leave and reach the reaper).
		old.m = m
		c.c.PutSized(key, old, old.size())
		return
	}
	e := &cacheEntry{doc: d, m: m}
	if ok {
		// The record's next document (a unit of work's, a merge's): its
		// content is the one counted when it was loaded, and more.
		e.perStored = old.perStored
	}
	c.c.PutSized(key, e, e.size())
}

// putLoaded caches a document just loaded from stored, which it was
// estimated to take cost bytes of memory for (crdt.Estimate). The caller
// holds the record's stripe lock.
func (c *docCache) putLoaded(key string, d *crdt.Doc, m meta, stored int, cost int64) {
	e := &cacheEntry{doc: d, m: m, perStored: float64(cost) / float64(max(stored, 1))}
	c.c.PutSized(key, e, e.size())
}

// holds reports whether d is the record's cached document.
func (c *docCache) holds(key string, d *crdt.Doc) bool {
	e, ok := c.c.Peek(key)
	return ok && e.doc == d
}

// has reports whether the record's document is cached, without counting
// it as used.
func (c *docCache) has(key string) bool {
	_, ok := c.c.Peek(key)
	return ok
}

func (c *docCache) drop(key string) { c.c.Remove(key) }
func (c *docCache) clear()          { c.c.Clear() }
func (c *docCache) len() int        { return c.c.Len() }
func (c *docCache) size() int64     { return c.c.Size() }

// settle caches the document of a record a unit of work stored, or frees
// it if the record is new. Reads go to the read model, so only another
// edit would use the document again: likely for a record being edited,
// unlikely for one just made, and inserts in bulk would fill the cache
// with documents no one uses, whose memory (Automerge's, and the Go
// heap's) the cache's bound lets grow to Options.CacheBytes, and whose
// eviction costs more than loading the few that are edited again. The
// caller holds the record's write lock.
func (r *Replica) settle(t *touched) {
	if t.existed {
		r.cache.put(cacheKey(t.coll, t.id), t.doc, t.new)
		return
	}
	r.discard(t.coll, t.id, t.doc)
}

// discard drops a record's document from the cache and frees d, which
// this operation made or loaded and will not store (nil: none). The
// caller holds the record's write lock, so no one else is using d.
func (r *Replica) discard(coll, id string, d *crdt.Doc) {
	r.cache.drop(cacheKey(coll, id))
	if d != nil {
		d.Free()
	}
}

// reaper frees the documents that leave the cache. Every use of a cached
// document holds its record's stripe lock, so the reaper frees one only
// once it holds that lock for writing: whoever used the document is done
// with it, and no one can get it again, as it is no longer cached. An
// operation that held it when it left may have put it back; the reaper
// checks that under the lock and leaves such a document be.
//
// It runs on a goroutine of its own because a document usually leaves
// while an operation on other records holds their locks: waiting there
// for this record's lock could deadlock.
type reaper struct {
	locks *stripes
	cache *docCache

	draining sync.Mutex // held while freeing a batch: drain returns once all before it is freed
	mu       sync.Mutex
	queue    []reapItem
	waiting  func(key string) // tests: called before taking a record's lock
	wake     chan struct{}    // a token when the queue is not empty
	stop     chan struct{}
	done     chan struct{}
}

type reapItem struct {
	key string
	doc *crdt.Doc
}

func newReaper(locks *stripes) *reaper {
	return &reaper{locks: locks, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

// add queues a document that left the cache. It never blocks.
func (p *reaper) add(key string, d *crdt.Doc) {
	p.mu.Lock()
	p.queue = append(p.queue, reapItem{key, d})
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *reaper) run() {
	defer close(p.done)
	for {
		select {
		case <-p.wake:
			p.drain()
		case <-p.stop:
			p.drain()
			return
		}
	}
}

// drain frees what is queued.
func (p *reaper) drain() {
	p.draining.Lock()
	defer p.draining.Unlock()
	p.mu.Lock()
	q, waiting := p.queue, p.waiting
	p.queue = nil
	p.mu.Unlock()
	for _, it := range q {
		if waiting != nil {
			waiting(it.key)
		}
		unlock := p.locks.lockAll([]string{it.key})
		if !p.cache.holds(it.key, it.doc) {
			it.doc.Free()
		}
		unlock()
	}
}

// close frees what is queued and stops the goroutine.
func (p *reaper) close() {
	close(p.stop)
	<-p.done
}

// stripes serializes access per record (by cacheKey) without a lock per
// record; see stripe.Locks. Writers lock every record they touch at once,
// with lockAll.
type stripes struct{ l stripe.Locks[string] }

func (s *stripes) index(key string) int         { return s.l.Index(key) }
func (s *stripes) rlock(key string) func()      { return s.l.RLock(key) }
func (s *stripes) lockAll(keys []string) func() { return s.l.Lock(keys...) }
