package relay

import (
	"hash/maphash"
	"sync"
)

// hub wakes the goroutines waiting on a collection: live subscribers when
// the log grows, lease waiters when a lease is released. A wake-up is only
// a hint to look again at the store, which stays the truth: a waiter takes
// the channel before it reads the store, so no change slips between the
// read and the wait.
type hub struct {
	mu    sync.Mutex
	chans map[Coll]chan struct{}
}

func newHub() *hub { return &hub{chans: map[Coll]chan struct{}{}} }

// wait returns a channel closed at the next notify of c.
func (h *hub) wait(c Coll) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch, ok := h.chans[c]
	if !ok {
		ch = make(chan struct{})
		h.chans[c] = ch
	}
	return ch
}

func (h *hub) notify(c Coll) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch, ok := h.chans[c]; ok {
		close(ch)
		delete(h.chans, c)
	}
}

// collLocks serializes pushes per collection without a lock per collection.
type collLocks struct {
	seed maphash.Seed
	mus  [64]sync.Mutex
}

func newCollLocks() *collLocks { return &collLocks{seed: maphash.MakeSeed()} }

func (l *collLocks) lock(c Coll) func() {
	var h maphash.Hash
	h.SetSeed(l.seed)
	h.WriteString(c.Tenant)
	h.WriteByte(0)
	h.WriteString(c.Collection)
	m := &l.mus[h.Sum64()%uint64(len(l.mus))]
	m.Lock()
	return m.Unlock
}
