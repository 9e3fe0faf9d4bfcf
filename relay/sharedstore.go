package relay

import (
	"context"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// A Store that several relay processes share (PostgreSQL, in package
// relay/pgstore) may implement the interfaces below. The embedded stores
// implement none of them, and then the relay behaves as it always has.

// StoreClock is implemented by a Store whose leases are timed by one clock
// for every relay process on it (the database's). Unless Options.Now is
// set, the relay takes every now it passes to the Store, and checks tokens
// by, from this clock: relays on machines whose clocks disagree still agree
// on when a lease expires. Now is called on every push and lease request,
// from many goroutines: it must be cheap and safe for concurrent use.
type StoreClock interface {
	Now() time.Time
}

// StoreEvents is implemented by a Store that other relay processes write
// to. It tells this relay what they did, so that its live subscribers and
// lease waiters look at the store again. An event is only a hint: the store
// stays the truth, a spurious event costs a read, and a lost one costs a
// delay of at most sweepInterval, since the relay also polls the heads of
// the collections it has subscribers on.
type StoreEvents interface {
	// Watch calls fn with each event from now on, until stop is called;
	// stop returns once no call of fn is in progress. fn runs on a
	// goroutine of the store, never under a lock of the store's, and must
	// not block.
	Watch(fn func(StoreEvent)) (stop func())
	// Heads returns the log heads of colls (0 for an empty collection), in
	// their order, in one read.
	Heads(ctx context.Context, colls []Coll) ([]uint64, error)
}

// StoreRecordHeads is implemented by a Store that reads a record's heads
// for less than the whole record. A relay on a store with StoreEvents uses
// it to check a loaded document that another relay process may have
// written to since (see stale.go): only a record whose heads moved is
// read whole and loaded again.
type StoreRecordHeads interface {
	// RecordHeads returns the record's stored heads, or ErrNotFound.
	RecordHeads(ctx context.Context, c Coll, record string) (crdt.Heads, error)
}

// StoreEventKind says what a StoreEvent reports.
type StoreEventKind int

const (
	// EventAppended: another relay process appended to the collection's log.
	EventAppended StoreEventKind = iota + 1
	// EventLeaseReleased: another relay process released the collection's
	// lease.
	EventLeaseReleased
	// EventsMissed: events may have been lost (the store's link to them
	// broke for a while). Coll is zero: every subscriber and lease waiter
	// should look again.
	EventsMissed
	// EventPresence: another relay process passed on presence for the
	// collection (see StorePresence); Presence holds it.
	EventPresence
)

// StoreEvent is what another relay process did to a shared store.
type StoreEvent struct {
	Kind     StoreEventKind
	Coll     Coll
	Presence string // EventPresence: what PublishPresence was given (a string, so events compare with ==)
}

// StorePresence is implemented by a StoreEvents store that carries
// presence (ephemeral state, never stored) between the relay processes on
// it. PublishPresence hands msg, at most MaxStorePresence bytes, to the
// other relay processes, which receive it as an EventPresence; it is a
// message, not a write, and may be lost. It is called from one goroutine
// at a time.
type StorePresence interface {
	PublishPresence(ctx context.Context, c Coll, msg []byte) error
}

// MaxStorePresence bounds a presence message a relay passes through a
// StorePresence: a presence message's data and its names.
const MaxStorePresence = 5 << 10

// sweepInterval is how often a relay on a StoreEvents store polls the heads
// of the collections it has live subscribers on: the bound on the delay a
// lost event causes (another relay crashed between its commit and its
// notification, say). A variable so that tests can leave sweeping to
// themselves.
var sweepInterval = 2 * time.Second

// nowFrom is the relay's clock when Options.Now is unset: the store's if it
// has one.
func nowFrom(st Store) func() time.Time {
	if c, ok := st.(StoreClock); ok {
		return c.Now
	}
	return time.Now
}

// storeWatch wakes this relay's subscribers and lease waiters on the
// events of a StoreEvents store, and polls the heads of the collections
// subscribers wait on, for events that were lost.
type storeWatch struct {
	s      *Server
	ev     StoreEvents
	stopEv func()
	cancel context.CancelFunc
	done   chan struct{}
	// heads are the heads the last sweep read; only sweep touches them.
	heads map[Coll]uint64
	// presDone is closed once presence stops going to the store.
	presDone <-chan struct{}
}

// startStoreWatch starts watching s's store, or returns nil if it has no
// events.
func startStoreWatch(s *Server) *storeWatch {
	ev, ok := s.store.(StoreEvents)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &storeWatch{s: s, ev: ev, cancel: cancel, done: make(chan struct{}), heads: map[Coll]uint64{}}
	w.stopEv = ev.Watch(w.event)
	go w.run(ctx)
	if sp, ok := s.store.(StorePresence); ok {
		w.presDone = s.pres.forward(ctx, sp)
	}
	return w
}

// close stops the watch and waits for it. A nil watch is fine.
func (w *storeWatch) close() {
	if w == nil {
		return
	}
	w.stopEv()
	w.cancel()
	<-w.done
	if w.presDone != nil {
		<-w.presDone
	}
}

func (w *storeWatch) event(e StoreEvent) {
	switch e.Kind {
	case EventAppended:
		w.s.marks.appended(e.Coll)
		w.s.hub.notify(e.Coll)
	case EventLeaseReleased:
		w.s.leases.notify(e.Coll)
	case EventsMissed:
		w.s.marks.missed()
		w.s.hub.notifyAll()
		w.s.leases.notifyAll()
	case EventPresence:
		w.s.pres.fromStore(e.Coll, e.Presence)
	}
}

func (w *storeWatch) run(ctx context.Context) {
	defer close(w.done)
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := w.sweep(ctx); err != nil && ctx.Err() == nil {
			w.s.log.Warn("polling the heads of subscribed collections failed", "err", err)
		}
	}
}

// sweep wakes the subscribers of each collection whose head moved since the
// last sweep, or that no sweep has seen yet, and every lease waiter (a
// release whose event was lost would otherwise keep them waiting until the
// lease's expiry).
func (w *storeWatch) sweep(ctx context.Context) error {
	for _, c := range w.s.leases.waited() {
		w.s.leases.notify(c)
	}
	colls := w.s.hub.waited()
	if len(colls) == 0 {
		clear(w.heads)
		return nil
	}
	heads, err := w.ev.Heads(ctx, colls)
	if err != nil {
		return err
	}
	next := make(map[Coll]uint64, len(colls))
	for i, c := range colls {
		if prev, ok := w.heads[c]; !ok || prev != heads[i] {
			w.s.hub.notify(c)
		}
		next[c] = heads[i]
	}
	w.heads = next
	return nil
}

// notifyAll wakes every waiter of every collection.
func (h *hub) notifyAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c, w := range h.waits {
		close(w.ch)
		delete(h.waits, c)
	}
}

// waited returns the collections someone waits on.
func (h *hub) waited() []Coll {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]Coll, 0, len(h.waits))
	for c := range h.waits {
		out = append(out, c)
	}
	return out
}
