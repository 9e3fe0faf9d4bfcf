package replica

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// next reads one event, failing the test if none comes.
func next(t *testing.T, f *Feed) Event {
	t.Helper()
	select {
	case ev, ok := <-f.C:
		if !ok {
			t.Fatalf("feed closed: %v", f.Err())
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
	}
	return Event{}
}

func TestWatchFromCatchesUpWhatChangedAfterARead(t *testing.T) {
	r := mem(t)
	c := coll(t, r, "c")
	for _, id := range []string{"a", "b", "c"} {
		c.Put(id, map[string]any{"v": 1})
	}
	pos, err := r.Position()
	if err != nil {
		t.Fatal(err)
	}
	// Edits between the read and the watch: one update, one delete, one
	// new record; "c" stays as read; another collection is not replayed.
	c.Update("a", func(d *crdt.Doc) error { return d.Set(crdt.Path{"v"}, 2) })
	c.Delete("b")
	c.Put("d", map[string]any{"v": 1})
	coll(t, r, "other").Put("x", map[string]any{})

	f := c.WatchFrom(pos, 0)
	defer f.Close()
	got := map[string]Event{}
	for range 3 {
		ev := next(t, f)
		if !ev.Replayed || ev.Collection != "c" {
			t.Fatalf("catch-up event %+v", ev)
		}
		got[ev.ID] = ev
	}
	for id, kind := range map[string]EventKind{"a": Updated, "b": Deleted, "d": Updated} {
		h, _ := c.Heads(id)
		if ev, ok := got[id]; !ok || ev.Kind != kind || !ev.Heads.Equal(h) {
			t.Fatalf("%s: replayed %+v, want %v at %v", id, ev, kind, h)
		}
	}
	// Then live events, as Watch gives them.
	c.Put("c", map[string]any{"v": 5})
	if ev := next(t, f); ev.Replayed || ev.ID != "c" || ev.Kind != Updated || ev.Origin != Local {
		t.Fatalf("live event %+v", ev)
	}
	// From the position now, nothing is replayed.
	now, _ := r.Position()
	if now <= pos {
		t.Fatalf("position did not grow: %d, then %d", pos, now)
	}
	g := c.WatchFrom(now, 0)
	defer g.Close()
	c.Put("e", map[string]any{})
	// The catch-up runs on its own goroutine: if it reads after the Put,
	// "e" comes twice, replayed then live.
	ev := next(t, g)
	if ev.Replayed && ev.ID == "e" {
		ev = next(t, g)
	}
	if ev.Replayed || ev.ID != "e" || ev.Kind != Created {
		t.Fatalf("first event after a current position: %+v", ev)
	}
}

func TestWatchFromSeesPurgedRecordsAndRestarts(t *testing.T) {
	dir := t.TempDir()
	r := open(t, dir, nil)
	c := coll(t, r, "c")
	c.Put("a", map[string]any{"v": 1})
	c.Put("b", map[string]any{"v": 1})
	pos, _ := r.Position()
	// A refresh from the relay removes every trace of a record the relay
	// lacks: the catch-up must still say it is gone.
	since, err := r.readTs()
	if err != nil {
		t.Fatal(err)
	}
	if _, kept, err := r.purgeRecord("c", "a", since); err != nil || kept {
		t.Fatalf("purge: kept %v, %v", kept, err)
	}
	r.Close()

	r = open(t, dir, nil)
	c = coll(t, r, "c")
	if now, _ := r.Position(); now < pos {
		t.Fatalf("position went back across a restart: %d, then %d", pos, now)
	}
	c.Update("b", func(d *crdt.Doc) error { return d.Set(crdt.Path{"v"}, 2) })
	f := c.WatchFrom(pos, 0)
	defer f.Close()
	got := map[string]EventKind{}
	for range 2 {
		ev := next(t, f)
		got[ev.ID] = ev.Kind
	}
	if got["a"] != Deleted || got["b"] != Updated {
		t.Fatalf("catch-up after a purge and a restart: %v", got)
	}
}

// Writers keep editing while a long catch-up is read: every record's last
// event is its final version (a catch-up page read before a live edit but
// delivered after it would end at an older one).
func TestWatchFromKeepsOrderUnderConcurrentWrites(t *testing.T) {
	r := mem(t)
	c := coll(t, r, "c")
	const n = 3*scanPage + 17
	for i := range n {
		c.Put(fmt.Sprint(i), map[string]any{"v": 0})
	}
	f := c.WatchFrom(0, 4096)
	defer f.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	for w := range 2 {
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for k := range 200 {
				id := fmt.Sprint(rng.IntN(n))
				c.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"v"}, int64(k)) })
			}
		}()
	}
	last := map[string]crdt.Heads{}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		select {
		case ev, ok := <-f.C:
			if !ok {
				t.Fatalf("feed closed: %v", f.Err())
			}
			last[ev.ID] = ev.Heads
			continue
		case <-done:
		}
		break
	}
	// Drain what is left, then compare with the store.
	for {
		select {
		case ev := <-f.C:
			last[ev.ID] = ev.Heads
			continue
		case <-time.After(200 * time.Millisecond):
		}
		break
	}
	if len(last) != n {
		t.Fatalf("%d records seen, want %d", len(last), n)
	}
	for id, h := range last {
		want, _ := c.Heads(id)
		if !h.Equal(want) {
			t.Fatalf("record %s: last event at %v, store at %v", id, h, want)
		}
	}
}

func TestWatchFromOverflowAndClose(t *testing.T) {
	r := mem(t)
	c := coll(t, r, "c")
	for i := range 10 {
		c.Put(fmt.Sprint(i), map[string]any{})
	}
	// Nobody reads: the catch-up blocks, and live events pile up past the
	// buffer: the feed is cut off.
	slow := c.WatchFrom(0, 4)
	for i := range 5 {
		c.Put(fmt.Sprint("live", i), map[string]any{})
	}
	n := 0
	for range slow.C {
		n++
	}
	if !errors.Is(slow.Err(), ErrFeedOverflow) || n > 10 {
		t.Fatalf("cut-off feed: %d events, err %v", n, slow.Err())
	}

	// Close during a catch-up ends it at once.
	closed := c.WatchFrom(0, 1)
	closed.Close()
	for range closed.C {
	}
	if closed.Err() != nil {
		t.Fatalf("closed feed: %v", closed.Err())
	}

	// So does closing the replica, which waits for the catch-up to stop.
	stuck := c.WatchFrom(0, 1)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	for range stuck.C {
	}
	if !errors.Is(stuck.Err(), ErrClosed) {
		t.Fatalf("feed after Close: %v", stuck.Err())
	}
	if _, err := r.Position(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Position after Close: %v", err)
	}
}
