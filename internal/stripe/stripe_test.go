package stripe

import (
	"fmt"
	"sync"
	"testing"
)

type coll struct{ tenant, name string }

// sameStripe returns a key other than k that shares k's stripe.
func sameStripe(t *testing.T, l *Locks[string], k string) string {
	t.Helper()
	for i := 0; i < 100*n; i++ {
		o := fmt.Sprint("other-", i)
		if l.Index(o) == l.Index(k) {
			return o
		}
	}
	t.Fatal("no key shares a stripe")
	return ""
}

func TestIndexIsStableAndInRange(t *testing.T) {
	var l Locks[coll]
	seen := map[int]bool{}
	for i := range 4 * n {
		k := coll{"t", fmt.Sprint(i)}
		x := l.Index(k)
		if x < 0 || x >= n {
			t.Fatalf("Index(%v) = %d, out of range", k, x)
		}
		if l.Index(k) != x {
			t.Fatalf("Index(%v) changed", k)
		}
		seen[x] = true
	}
	// 1,024 keys over 256 stripes leave none empty unless the hash is bad.
	if len(seen) < n*9/10 {
		t.Fatalf("1,024 keys use %d of %d stripes", len(seen), n)
	}
}

func TestLockExcludesReadersAndWriters(t *testing.T) {
	var l Locks[string]
	unlock := l.Lock("a")
	m := &l.mus[l.Index("a")]
	if m.TryRLock() {
		t.Fatal("a reader got a write-locked stripe")
	}
	unlock()
	r1 := l.RLock("a")
	r2 := l.RLock("a") // readers share
	if m.TryLock() {
		t.Fatal("a writer got a read-locked stripe")
	}
	r1()
	r2()
	if !m.TryLock() {
		t.Fatal("the stripe stayed locked after every unlock")
	}
	m.Unlock()
}

// Keys that repeat, or share a stripe, lock it once: taking a stripe twice
// would deadlock.
func TestLockTakesEachStripeOnce(t *testing.T) {
	var l Locks[string]
	b := sameStripe(t, &l, "a")
	unlock := l.Lock("a", b, "a", "c")
	for _, k := range []string{"a", "c"} {
		if l.mus[l.Index(k)].TryLock() {
			t.Fatalf("stripe of %q not locked", k)
		}
	}
	unlock()
	for i := range l.mus {
		if !l.mus[i].TryLock() {
			t.Fatalf("stripe %d still locked after unlock", i)
		}
		l.mus[i].Unlock()
	}
}

// Writers asking for the same keys in opposite orders never deadlock, and
// each key's writers take turns: the race detector sees the counters
// written under the lock alone.
func TestLockSerializesWritersWithoutDeadlock(t *testing.T) {
	var l Locks[coll]
	keys := []coll{{"t", "x"}, {"t", "y"}, {"u", "x"}}
	vals := make([]int, len(keys))
	const workers, rounds = 8, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				a, b := (w+r)%len(keys), (w+r+1)%len(keys)
				if w%2 == 1 {
					a, b = b, a
				}
				unlock := l.Lock(keys[a], keys[b])
				vals[a]++
				vals[b]++
				unlock()
				runlock := l.RLock(keys[a])
				_ = vals[a]
				runlock()
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, v := range vals {
		total += v
	}
	if total != 2*workers*rounds {
		t.Fatalf("counted %d increments, want %d", total, 2*workers*rounds)
	}
}

func BenchmarkLock(b *testing.B) {
	b.Run("string", func(b *testing.B) {
		var l Locks[string]
		for b.Loop() {
			l.Lock("c\x00record-42")()
		}
	})
	b.Run("struct", func(b *testing.B) {
		var l Locks[coll]
		k := coll{"tenant", "record-42"}
		for b.Loop() {
			l.Lock(k)()
		}
	})
	b.Run("three", func(b *testing.B) {
		var l Locks[string]
		for b.Loop() {
			l.Lock("a", "b", "c")()
		}
	})
	b.Run("rlock", func(b *testing.B) {
		var l Locks[string]
		for b.Loop() {
			l.RLock("c\x00record-42")()
		}
	})
}
