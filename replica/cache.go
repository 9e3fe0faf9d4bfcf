package replica

import (
	"container/list"
	"hash/maphash"
	"slices"
	"sync"

	"github.com/ferrysync/ferry/crdt"
)

// docCache keeps recently used documents loaded, up to a bound. A cached
// document is only read or changed under its record's stripe lock.
type docCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // front: most recent; values are *cacheEntry
	byKey map[string]*list.Element
}

type cacheEntry struct {
	key string
	doc *crdt.Doc
	m   meta
}

func newDocCache(max int) *docCache {
	return &docCache{max: max, order: list.New(), byKey: map[string]*list.Element{}}
}

func (c *docCache) get(key string) (*crdt.Doc, meta, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[key]
	if !ok {
		return nil, meta{}, false
	}
	c.order.MoveToFront(e)
	ent := e.Value.(*cacheEntry)
	return ent.doc, ent.m, true
}

func (c *docCache) put(key string, d *crdt.Doc, m meta) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[key]; ok {
		ent := e.Value.(*cacheEntry)
		ent.doc, ent.m = d, m
		c.order.MoveToFront(e)
		return
	}
	c.byKey[key] = c.order.PushFront(&cacheEntry{key: key, doc: d, m: m})
	for c.order.Len() > c.max {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.byKey, old.Value.(*cacheEntry).key)
	}
}

func (c *docCache) drop(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[key]; ok {
		c.order.Remove(e)
		delete(c.byKey, key)
	}
}

func (c *docCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// stripes serializes access per record without a lock per record: a record
// maps to one of a fixed set of RW locks. Writers lock every stripe they
// touch in index order, so two writers never wait on each other in a cycle.
type stripes struct {
	seed maphash.Seed
	mus  [256]sync.RWMutex
	once sync.Once
}

func (s *stripes) index(key string) int {
	s.once.Do(func() { s.seed = maphash.MakeSeed() })
	return int(maphash.String(s.seed, key) % uint64(len(s.mus)))
}

func (s *stripes) rlock(key string) func() {
	m := &s.mus[s.index(key)]
	m.RLock()
	return m.RUnlock
}

// lockAll write-locks the stripes of keys and returns the unlock.
func (s *stripes) lockAll(keys []string) func() {
	idx := make([]int, 0, len(keys))
	for _, k := range keys {
		idx = append(idx, s.index(k))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		s.mus[i].Lock()
	}
	return func() {
		for _, i := range idx {
			s.mus[i].Unlock()
		}
	}
}
