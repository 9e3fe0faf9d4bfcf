package relay

import (
	"context"
	"errors"
	"sync"
	"time"
)

// memBudget is the relay process's one memory budget: every piece of work
// whose memory grows with what clients send (a loaded document, a push
// being checked and waiting for its group commit, a pull's page or a live
// message on its way out) holds a grant of what it takes, for as long as
// it takes it. Past the budget, new work waits for grants to be released,
// at most wait, in the order it came; then it is refused with errBusy, so
// a client is told to come back rather than the process running out of
// memory.
//
// Work that knows its memory before taking it acquires (and may wait);
// memory already taken (a document just loaded, bigger than estimated)
// is charged without waiting, so the accounting stays true even when it
// passes the budget, and later work waits until it is back under. A
// request larger than the whole budget is granted only when nothing else
// holds any of it.
//
// A memBudget is safe for concurrent use.
type memBudget struct {
	max  int64
	wait time.Duration
	// reclaim, if set, is asked to give back n bytes before work waits:
	// the document cache evicts, which releases its documents' grants.
	// It is called with no lock of the budget held.
	reclaim func(n int64)
	// refused, if set, is called each time work is refused.
	refused func()
	// newTimer replaces time.NewTimer for the bounded wait (tests).
	newTimer func(time.Duration) (<-chan time.Time, func() bool)

	// freedSignal, if set, receives (without blocking) each time grants
	// have given back a fifth of the budget since the last signal: the
	// memory behind them is free for the process to give back (see
	// Server.releaseLoop).
	freedSignal chan struct{}

	mu      sync.Mutex
	used    int64
	freed   int64        // given back since the last freedSignal
	peak    int64        // the most used since newMemBudget or the last peakUse
	waiters []*memWaiter // FIFO
	closed  bool
	done    chan struct{} // closed by close
}

type memWaiter struct {
	n     int64
	ready chan struct{} // closed once granted
}

// errBusy is what work past the budget gets after its wait: the caller
// answers busy, and nothing was done.
var errBusy = errors.New("relay: memory budget in use")

// errBudgetClosed is what waiting work gets once the Server closes.
var errBudgetClosed = errors.New("relay: closing")

func newMemBudget(max int64, wait time.Duration) *memBudget {
	return &memBudget{max: max, wait: wait, done: make(chan struct{})}
}

// memGrant is memory held of a budget. Its methods are safe for
// concurrent use; release may be called any number of times.
type memGrant struct {
	b  *memBudget
	mu sync.Mutex
	n  int64
}

// fits says whether n more bytes may be granted now. b.mu is held.
func (b *memBudget) fits(n int64) bool {
	return b.used+min(n, b.max) <= b.max
}

// acquire grants n bytes, waiting (at most b.wait, and not past ctx) for
// room if the budget is in use. It returns errBusy if no room came in
// time, errBudgetClosed if the budget closed, or ctx's error.
func (b *memBudget) acquire(ctx context.Context, n int64) (*memGrant, error) {
	n = max(n, 0)
	if g, ok := b.tryAcquire(n); ok {
		return g, nil
	}
	if b.reclaim != nil {
		b.reclaim(n)
		if g, ok := b.tryAcquire(n); ok {
			return g, nil
		}
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, errBudgetClosed
	}
	w := &memWaiter{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()

	newTimer := b.newTimer
	if newTimer == nil {
		newTimer = func(d time.Duration) (<-chan time.Time, func() bool) {
			t := time.NewTimer(d)
			return t.C, t.Stop
		}
	}
	expired, stop := newTimer(b.wait)
	defer stop()
	var err error
	select {
	case <-w.ready:
		return &memGrant{b: b, n: n}, nil
	case <-expired:
		err = errBusy
	case <-b.done:
		err = errBudgetClosed
	case <-ctx.Done():
		err = ctx.Err()
	}
	b.mu.Lock()
	select {
	case <-w.ready:
		// Granted as the wait ended: keep it.
		b.mu.Unlock()
		return &memGrant{b: b, n: n}, nil
	default:
	}
	b.remove(w)
	// A large waiter that gives up may let smaller ones behind it in.
	b.grantLocked()
	b.mu.Unlock()
	if errors.Is(err, errBusy) && b.refused != nil {
		b.refused()
	}
	return nil, err
}

// tryAcquire grants n bytes if they fit now and nobody waits before.
func (b *memBudget) tryAcquire(n int64) (*memGrant, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || len(b.waiters) > 0 || !b.fits(n) {
		return nil, false
	}
	b.used += n
	b.peak = max(b.peak, b.used)
	return &memGrant{b: b, n: n}, true
}

// charge grants n bytes without waiting, past the budget if need be: for
// memory already taken.
func (b *memBudget) charge(n int64) *memGrant {
	n = max(n, 0)
	b.mu.Lock()
	b.used += n
	b.peak = max(b.peak, b.used)
	b.mu.Unlock()
	return &memGrant{b: b, n: n}
}

// remove drops w from the waiters. b.mu is held.
func (b *memBudget) remove(w *memWaiter) {
	for i, x := range b.waiters {
		if x == w {
			b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
			return
		}
	}
}

// grantLocked grants the waiters at the head of the queue while they fit.
// b.mu is held.
func (b *memBudget) grantLocked() {
	for len(b.waiters) > 0 && b.fits(b.waiters[0].n) {
		w := b.waiters[0]
		b.waiters = b.waiters[1:]
		b.used += w.n
		b.peak = max(b.peak, b.used)
		close(w.ready)
	}
}

// add changes what is used by d (negative: given back), and lets waiters
// in if there is room.
func (b *memBudget) add(d int64) {
	b.mu.Lock()
	b.used += d
	b.peak = max(b.peak, b.used)
	signal := false
	if d < 0 {
		b.grantLocked()
		if b.freed -= d; b.freed >= b.max/5 && b.freedSignal != nil {
			b.freed, signal = 0, true
		}
	}
	b.mu.Unlock()
	if signal {
		select {
		case b.freedSignal <- struct{}{}:
		default:
		}
	}
}

// inUse is the memory granted now.
func (b *memBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// peakUse returns the most used since the last call (or newMemBudget).
func (b *memBudget) peakUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.peak
	b.peak = b.used
	return p
}

// close refuses every waiting and later acquire with errBudgetClosed.
// Grants already made stay valid and are released as usual.
func (b *memBudget) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.done)
	}
}

// set makes the grant n bytes, without waiting: growing it is for memory
// already taken. A released grant stays released.
func (g *memGrant) set(n int64) {
	if g == nil {
		return
	}
	n = max(n, 0)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.b == nil {
		return
	}
	g.b.add(n - g.n)
	g.n = n
}

// release gives the grant back. Later calls do nothing.
func (g *memGrant) release() {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.b == nil {
		return
	}
	g.b.add(-g.n)
	g.b, g.n = nil, 0
}

// moveTo makes to hold n bytes, taking what it grows by from g, which
// keeps at least keep: what a push reserved for what its changes add to
// a document becomes the document's once they are merged.
// The two change in one step, so the budget never counts the growth
// twice. g and to are grants of one budget; g is never a document's.
func (g *memGrant) moveTo(to *memGrant, n, keep int64) {
	if g == nil {
		to.set(n)
		return
	}
	n = max(n, 0)
	g.mu.Lock()
	defer g.mu.Unlock()
	to.mu.Lock()
	defer to.mu.Unlock()
	if to.b == nil {
		return
	}
	grow := n - to.n
	d := grow
	if g.b != nil && grow > 0 {
		left := max(g.n-grow, min(keep, g.n))
		d -= g.n - left
		g.n = left
	}
	to.n = n
	to.b.add(d)
}

// size is what the grant holds.
func (g *memGrant) size() int64 {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}
