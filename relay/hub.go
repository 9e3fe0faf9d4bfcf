package relay

import "sync"

// hub wakes the goroutines waiting on a collection: live subscribers when
// the log grows, lease waiters when a lease is released. A wake-up is only
// a hint to look again at the store, which stays the truth: a waiter takes
// the channel before it reads the store, so no change slips between the
// read and the wait.
//
// The hub holds an entry only while someone waits on the collection, so
// its size follows the waiters, not every collection ever waited on.
type hub struct {
	mu    sync.Mutex
	waits map[Coll]*hubWait
}

type hubWait struct {
	ch      chan struct{} // closed by notify
	waiters int
}

func newHub() *hub { return &hub{waits: map[Coll]*hubWait{}} }

// wait returns a channel closed at the next notify of c, and done, which
// the caller must call once when it stops waiting on the channel.
func (h *hub) wait(c Coll) (ch <-chan struct{}, done func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w := h.waits[c]
	if w == nil {
		w = &hubWait{ch: make(chan struct{})}
		h.waits[c] = w
	}
	w.waiters++
	return w.ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		w.waiters--
		if w.waiters == 0 && h.waits[c] == w {
			delete(h.waits, c)
		}
	}
}

func (h *hub) notify(c Coll) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if w := h.waits[c]; w != nil {
		close(w.ch)
		delete(h.waits, c)
	}
}

// size is the number of collections waited on, for tests.
func (h *hub) size() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.waits)
}
