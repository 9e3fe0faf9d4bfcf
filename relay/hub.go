package relay

import "sync"

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
