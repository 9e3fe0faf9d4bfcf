package stripe

import (
	"hash/maphash"
	"slices"
	"sync"
)

// Count is the number of stripes. 256 keeps two busy keys from sharing
// one most of the time, in 6 KiB.
const Count = 256

const n = Count

// Locks maps keys of type K to a fixed set of read-write locks. The zero
// value is ready to use; a Locks must not be copied once used. It is safe
// for concurrent use.
//
// A goroutine takes one set of stripes at a time, all at once with Lock,
// and releases them before it takes another: Lock takes its stripes in
// index order, so two goroutines never wait on each other in a cycle, but
// one that holds a stripe while it asks for more could.
type Locks[K comparable] struct {
	once sync.Once
	seed maphash.Seed
	mus  [n]sync.RWMutex
}

// Index returns the stripe of key, from 0 to 255. Keys with the same index
// share a lock.
func (l *Locks[K]) Index(key K) int {
	l.once.Do(func() { l.seed = maphash.MakeSeed() })
	return int(maphash.Comparable(l.seed, key) % n)
}

// RLock read-locks key's stripe and returns its unlock.
func (l *Locks[K]) RLock(key K) (unlock func()) {
	m := &l.mus[l.Index(key)]
	m.RLock()
	return m.RUnlock
}

// Lock write-locks the stripes of keys, each once, and returns the
// unlock.
func (l *Locks[K]) Lock(keys ...K) (unlock func()) {
	if len(keys) == 1 { // the common case, without a slice of indexes
		m := &l.mus[l.Index(keys[0])]
		m.Lock()
		return m.Unlock
	}
	idx := make([]int, 0, len(keys))
	for _, k := range keys {
		idx = append(idx, l.Index(k))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		l.mus[i].Lock()
	}
	return func() {
		for _, i := range idx {
			l.mus[i].Unlock()
		}
	}
}
