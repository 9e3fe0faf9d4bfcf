package replica

import (
	"hash/maphash"
	"slices"
	"sync"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/lru"
)

// docCache keeps recently used documents loaded, with their meta, up to a
// bound. A cached document is only read or changed under its record's
// stripe lock.
type docCache struct {
	c *lru.Cache[string, *cacheEntry]
}

type cacheEntry struct {
	doc *crdt.Doc
	m   meta
}

func newDocCache(max int) *docCache { return &docCache{c: lru.New[string, *cacheEntry](max)} }

func (c *docCache) get(key string) (*crdt.Doc, meta, bool) {
	e, ok := c.c.Get(key)
	if !ok {
		return nil, meta{}, false
	}
	return e.doc, e.m, true
}

func (c *docCache) put(key string, d *crdt.Doc, m meta) { c.c.Put(key, &cacheEntry{doc: d, m: m}) }
func (c *docCache) drop(key string)                     { c.c.Remove(key) }
func (c *docCache) len() int                            { return c.c.Len() }

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
