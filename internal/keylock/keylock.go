package keylock

import (
	"slices"
	"sync"
)

// Locks holds a lock per key in use. It is safe for concurrent use.
//
// Lock takes its keys in the order of the comparison given to New, so two
// goroutines that each take a set of keys at once never wait on each other
// in a cycle; one that holds keys while it asks for more could.
type Locks[K comparable] struct {
	cmp func(a, b K) int

	mu   sync.Mutex
	keys map[K]*entry // the keys held or waited for

	// waiting, if set (by tests), is called with a key Lock is about to
	// wait for, held by another.
	waiting func(K)
}

type entry struct {
	mu   sync.Mutex
	refs int // holders and waiters; guarded by Locks.mu
}

// New returns locks for keys ordered by cmp, which must be a total order
// (cmp(a, b) == 0 only if a == b).
func New[K comparable](cmp func(a, b K) int) *Locks[K] {
	return &Locks[K]{cmp: cmp, keys: map[K]*entry{}}
}

// Lock locks every key of keys, each once, and returns the unlock, which
// must be called once.
func (l *Locks[K]) Lock(keys ...K) (unlock func()) {
	ks := slices.Clone(keys)
	slices.SortFunc(ks, l.cmp)
	ks = slices.CompactFunc(ks, func(a, b K) bool { return l.cmp(a, b) == 0 })
	es := make([]*entry, len(ks))
	for i, k := range ks {
		l.mu.Lock()
		e := l.keys[k]
		if e == nil {
			e = &entry{}
			l.keys[k] = e
		}
		e.refs++
		wait := e.refs > 1 && l.waiting != nil
		l.mu.Unlock()
		if wait {
			l.waiting(k)
		}
		e.mu.Lock()
		es[i] = e
	}
	return func() {
		for i, e := range es {
			e.mu.Unlock()
			l.mu.Lock()
			if e.refs--; e.refs == 0 {
				delete(l.keys, ks[i])
			}
			l.mu.Unlock()
		}
	}
}

// held returns how many keys have a lock: held, or waited for.
func (l *Locks[K]) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}
