package relay_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// sharedMem is a memstore.Store posing as a store other relay processes write
// to: the test writes to it directly (as another relay would) and emits
// the events it chooses.
type sharedMem struct {
	*memstore.Store
	now time.Time

	mu   sync.Mutex
	fns  map[int]func(relay.StoreEvent)
	next int
	// reads gets the length of every Log result, so a test knows when a
	// subscriber has read the log and is waiting.
	reads chan int
}

// newSharedMem returns an empty sharedMem, and turns the relay's periodic
// sweep off for the test, so that only what the test does wakes anyone.
func newSharedMem(t *testing.T) *sharedMem {
	t.Cleanup(relay.SetSweepInterval(time.Hour))
	return &sharedMem{Store: memstore.New(), fns: map[int]func(relay.StoreEvent){}, reads: make(chan int, 1024),
		now: time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)}
}

func (s *sharedMem) Now() time.Time { return s.now }

func (s *sharedMem) Watch(fn func(relay.StoreEvent)) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.next
	s.next++
	s.fns[id] = fn
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.fns, id)
	}
}

func (s *sharedMem) Heads(ctx context.Context, colls []relay.Coll) ([]uint64, error) {
	out := make([]uint64, len(colls))
	for i, c := range colls {
		h, err := s.Head(ctx, c)
		if err != nil {
			return nil, err
		}
		out[i] = h
	}
	return out, nil
}

func (s *sharedMem) Log(ctx context.Context, c relay.Coll, after uint64, limit int) ([]relay.LogEntry, error) {
	l, err := s.Store.Log(ctx, c, after, limit)
	select {
	case s.reads <- len(l):
	default:
	}
	return l, err
}

func (s *sharedMem) emit(e relay.StoreEvent) {
	s.mu.Lock()
	var fns []func(relay.StoreEvent)
	for _, fn := range s.fns {
		fns = append(fns, fn)
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn(e)
	}
}

// waitIdle returns once a subscriber has read the log and found nothing
// new: from then on it waits, and only a wake-up makes it read again.
func (s *sharedMem) waitIdle(t *testing.T) {
	t.Helper()
	for {
		select {
		case n := <-s.reads:
			if n == 0 {
				return
			}
		case <-time.After(10 * time.Second): // only turns a hang into a failure
			t.Fatal("the subscriber never read the log")
		}
	}
}

// appendElsewhere appends a change to record r as another relay process
// would: straight into the store, unknown to this relay.
func appendElsewhere(t *testing.T, st relay.Store, c relay.Coll, ed *storetest.Editor, base crdt.Heads) crdt.Heads {
	t.Helper()
	data := ed.Edit(map[string]any{"v": time.Now().UnixNano()})
	if _, err := st.Append(context.Background(), c, 0, time.Now(), []relay.Entry{{Record: "r", Base: base, Changes: data, Heads: ed.Doc.Heads()}}); err != nil {
		t.Fatal(err)
	}
	return ed.Doc.Heads()
}

// Another relay's append reaches this relay's subscribers through the
// store's event, through a "missed" event, and, with no event at all,
// through the sweep of subscribed heads.
func TestSharedStoreWakesSubscribers(t *testing.T) {
	st := newSharedMem(t)
	tr := newTestRelay(t, st, func(o *relay.Options) { o.CompactInterval = -1 })
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	sub := tr.client("shop")
	mustCall[transport.OK](t, sub, &transport.Subscribe{Collection: "c", Cursor: 0})
	ed := storetest.NewEditor(t, "ee01")
	var heads crdt.Heads
	for i, wake := range []struct {
		name string
		fn   func()
	}{
		{"an append event", func() { st.emit(relay.StoreEvent{Kind: relay.EventAppended, Coll: c}) }},
		{"a missed-events event", func() { st.emit(relay.StoreEvent{Kind: relay.EventsMissed}) }},
		{"a sweep that sees the collection first", func() { tr.srv.Sweep(context.Background()) }},
		{"a sweep that sees the head move", func() { tr.srv.Sweep(context.Background()) }},
	} {
		st.waitIdle(t)
		heads = appendElsewhere(t, st, c, ed, heads)
		wake.fn()
		lv := nextLive(t, sub)
		if lv.Next != uint64(i+1) || len(lv.Records) != 1 {
			t.Fatalf("%s: live message %+v, want entry %d", wake.name, lv, i+1)
		}
	}
	// An event of another collection wakes nobody here; the next one does.
	st.waitIdle(t)
	appendElsewhere(t, st, c, ed, heads)
	st.emit(relay.StoreEvent{Kind: relay.EventAppended, Coll: relay.Coll{Tenant: "shop", Collection: "other"}})
	st.emit(relay.StoreEvent{Kind: relay.EventAppended, Coll: c})
	if lv := nextLive(t, sub); lv.Next != 5 {
		t.Fatalf("live message %+v, want entry 5", lv)
	}
}

// A lease released through another relay wakes this relay's waiter at
// once, through the store's event.
func TestSharedStoreWakesLeaseWaiters(t *testing.T) {
	st := newSharedMem(t)
	tr := newTestRelay(t, st, nil)
	waiting := make(chan struct{}, 1)
	*tr.srv.HookLeaseWaiting() = func(relay.Coll) { waiting <- struct{}{} }
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	held, err := st.Acquire(context.Background(), c, "elsewhere", time.Hour, tr.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	b := tr.client("shop")
	got := make(chan error, 1)
	go func() {
		_, err := call[transport.Lease](t, b, &transport.LeaseAcquire{Collection: "c", TTLMS: 1000, WaitMS: 60_000})
		got <- err
	}()
	<-waiting
	if err := st.Release(context.Background(), c, "elsewhere", held.Fence); err != nil {
		t.Fatal(err)
	}
	st.emit(relay.StoreEvent{Kind: relay.EventLeaseReleased, Coll: c})
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("lease after release elsewhere: %v", err)
		}
	case <-time.After(10 * time.Second): // only turns a hang into a failure
		t.Fatal("the waiter was not woken by the release event")
	}
}

// Unless told otherwise, a relay on a store with a clock takes its time
// from it, and stops watching the store's events when closed.
func TestSharedStoreClockAndClose(t *testing.T) {
	st := newSharedMem(t)
	auth, err := relay.NewAuth([]relay.App{relay.NewApp("shop")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relay.NewServer(&relay.Options{Store: st, Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	if got := srv.Clock(); !got.Equal(st.now) {
		t.Errorf("relay's clock reads %v, want the store's %v", got, st.now)
	}
	st.mu.Lock()
	watchers := len(st.fns)
	st.mu.Unlock()
	if watchers != 1 {
		t.Fatalf("%d watchers of the store's events, want 1", watchers)
	}
	srv.Close()
	st.mu.Lock()
	watchers = len(st.fns)
	st.mu.Unlock()
	if watchers != 0 {
		t.Fatalf("%d watchers left after Close", watchers)
	}
	// A store without events or clock: no watch, the system clock.
	srv, err = relay.NewServer(&relay.Options{Store: memstore.New(), Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if srv.Watching() {
		t.Fatal("a watch on a store without events")
	}
	if d := time.Since(srv.Clock()); d < -time.Minute || d > time.Minute {
		t.Fatalf("relay's clock is %v off the system's", d)
	}
}
