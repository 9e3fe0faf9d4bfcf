package lru

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

func TestEvictsLeastRecentlyUsed(t *testing.T) {
	c := New[string, int](2)
	c.Put("a", 1)
	c.Put("b", 2)
	if v, ok := c.Get("a"); !ok || v != 1 { // a is now the most recent
		t.Fatalf("Get(a) = %v %v", v, ok)
	}
	c.Put("c", 3) // evicts b
	if _, ok := c.Get("b"); ok {
		t.Fatal("b survived eviction")
	}
	if v, _ := c.Get("a"); v != 1 {
		t.Fatal("a evicted instead of b")
	}
	c.Put("a", 10)
	if v, _ := c.Get("a"); v != 10 || c.Len() != 2 {
		t.Fatalf("update: a=%v len=%d", v, c.Len())
	}
	c.Remove("a")
	if _, ok := c.Get("a"); ok || c.Len() != 1 {
		t.Fatal("Remove left a behind")
	}
}

// evictions records what reaches the callback.
type evictions struct {
	mu  sync.Mutex
	got []string
}

func (e *evictions) add(k string, v int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, fmt.Sprintf("%s=%d", k, v))
}

func (e *evictions) take() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	g := e.got
	e.got = nil
	return g
}

func (e *evictions) expect(t *testing.T, want ...string) {
	t.Helper()
	if got := e.take(); !slices.Equal(got, want) {
		t.Fatalf("evicted %v, want %v", got, want)
	}
}

func TestBoundedBySize(t *testing.T) {
	var ev evictions
	c := NewSized[string, int](100, ev.add)
	c.PutSized("a", 1, 40)
	c.PutSized("b", 2, 40)
	c.PutSized("c", 3, 20)
	ev.expect(t)
	if c.Size() != 100 || c.Len() != 3 {
		t.Fatalf("size %d len %d", c.Size(), c.Len())
	}
	c.Get("a")             // b is now the least recent
	c.PutSized("d", 4, 30) // 130: b goes, 90
	ev.expect(t, "b=2")
	c.PutSized("e", 5, 50) // 140: c, then a go, 80
	ev.expect(t, "c=3", "a=1")
	if c.Size() != 80 {
		t.Fatalf("size %d, want 80", c.Size())
	}

	// The same value again only resizes, and may evict others.
	c.PutSized("d", 4, 60) // 110: e goes
	ev.expect(t, "e=5")
	// Another value for a key releases the old one.
	c.PutSized("d", 40, 10)
	ev.expect(t, "d=4")
	// An entry larger than the bound is not kept.
	c.PutSized("huge", 6, 101)
	ev.expect(t, "d=40", "huge=6")
	if c.Len() != 0 || c.Size() != 0 {
		t.Fatalf("after an oversize put: len %d size %d", c.Len(), c.Size())
	}
	c.PutSized("f", 7, 1)
	c.Remove("f")
	c.Remove("f")
	ev.expect(t, "f=7")
	c.PutSized("g", 8, 1)
	c.PutSized("h", 9, 1)
	c.Clear()
	ev.expect(t, "g=8", "h=9")
}

func TestPinnedValueWaitsForUnpin(t *testing.T) {
	var ev evictions
	c := NewSized[string, int](10, ev.add)
	c.PutSized("a", 1, 10)
	v, unpin, ok := c.Acquire("a")
	if !ok || v != 1 {
		t.Fatalf("Acquire = %v %v", v, ok)
	}
	c.PutSized("b", 2, 10) // a leaves, but is pinned
	ev.expect(t)
	if _, ok := c.Get("a"); ok {
		t.Fatal("a still in the cache")
	}
	unpin()
	ev.expect(t, "a=1")
	unpin() // once only
	ev.expect(t)

	// Two pins: the value waits for both.
	_, u1, _ := c.Acquire("b")
	_, u2, _ := c.Acquire("b")
	c.Remove("b")
	u1()
	ev.expect(t)
	u2()
	ev.expect(t, "b=2")

	// A value put back while pinned is in the cache again: its unpin
	// releases nothing.
	unpin = c.PutAcquire("c", 3, 10)
	c.PutSized("d", 4, 10) // c leaves, pinned
	c.PutSized("c", 3, 10) // and is back; d leaves
	ev.expect(t, "d=4")
	unpin()
	ev.expect(t)
	if v, ok := c.Get("c"); !ok || v != 3 {
		t.Fatalf("c = %v %v after it was put back", v, ok)
	}
	c.Clear()
	ev.expect(t, "c=3")

	// PutAcquire pins before evicting: an oversize value waits too.
	unpin = c.PutAcquire("e", 5, 11)
	ev.expect(t)
	unpin()
	ev.expect(t, "e=5")

	if _, unpin, ok := c.Acquire("nothing"); ok {
		t.Fatal("Acquire of a missing key succeeded")
	} else {
		unpin() // harmless
	}

	// Pin holds a value by identity, in the cache or pinned after it
	// left, and not once it reached the callback.
	c.PutSized("f", 6, 10)
	p1, ok := c.Pin("f", 6)
	if !ok {
		t.Fatal("Pin of a cached value failed")
	}
	c.PutSized("g", 7, 10) // f leaves, pinned
	p2, ok := c.Pin("f", 6)
	if !ok {
		t.Fatal("Pin of a value pinned after it left failed")
	}
	if _, ok := c.Pin("f", 99); ok {
		t.Fatal("Pin of another value succeeded")
	}
	p1()
	ev.expect(t)
	p2()
	ev.expect(t, "f=6")
	if _, ok := c.Pin("f", 6); ok {
		t.Fatal("Pin of a value the callback has succeeded")
	}
}

// resource stands for a document: freed by the callback, and must not be
// used after.
type resource struct {
	id    int
	freed atomic.Bool
	data  []int // written at creation, read by users, cleared by free
}

// TestReadersNeverSeeFreed has readers pin values and use them while
// writers fill the cache, evicting them, and the callback frees what
// leaves. Run with -race: a free racing a read is a data race on data
// even when the freed check misses it.
func TestReadersNeverSeeFreed(t *testing.T) {
	var frees atomic.Int64
	c := NewSized[int, *resource](8, func(_ int, r *resource) {
		if r.freed.Swap(true) {
			t.Errorf("resource %d freed twice", r.id)
		}
		r.data = nil
		frees.Add(1)
	})
	const keys, writers, readers, rounds = 32, 2, 4, 2000
	var made atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range rounds {
				r := &resource{id: int(next.Add(1)), data: []int{1, 2, 3}}
				made.Add(1)
				c.PutSized(rng.IntN(keys), r, 1+rng.Int64N(3))
			}
		}()
	}
	for rd := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(rd), 2))
			for range rounds {
				k := rng.IntN(keys)
				var r *resource
				var unpin func()
				if rng.IntN(2) == 0 {
					var ok bool
					if r, unpin, ok = c.Acquire(k); !ok {
						continue
					}
				} else {
					// Load-and-insert, as a cache miss does.
					r = &resource{id: int(next.Add(1)), data: []int{1, 2, 3}}
					made.Add(1)
					unpin = c.PutAcquire(k, r, 2)
				}
				for range 3 {
					if r.freed.Load() || len(r.data) != 3 || r.data[2] != 3 {
						t.Errorf("resource %d used after it was freed", r.id)
					}
				}
				unpin()
			}
		}()
	}
	wg.Wait()
	if c.Size() > 8 {
		t.Errorf("size %d over the bound", c.Size())
	}
	c.Clear()
	if got, want := frees.Load(), made.Load(); got != want {
		t.Fatalf("%d of %d resources freed once everything left and was unpinned", got, want)
	}
}

// TestTrim checks that Trim gives back at least what is asked, least
// recently used first, and keeps the bound.
func TestTrim(t *testing.T) {
	var ev evictions
	c := NewSized[string, int](100, ev.add)
	c.PutSized("a", 1, 40)
	c.PutSized("b", 2, 30)
	c.PutSized("c", 3, 20)
	c.Get("a")
	c.Trim(35) // b (30), then c (20)
	ev.expect(t, "b=2", "c=3")
	if c.Size() != 40 {
		t.Fatalf("size %d after Trim, want 40", c.Size())
	}
	c.Trim(0)
	ev.expect(t)
	c.Trim(1000)
	ev.expect(t, "a=1")
	c.PutSized("d", 4, 100) // the bound is still 100
	if c.Len() != 1 {
		t.Fatalf("len %d after Trim and a put at the bound", c.Len())
	}
}
