package keylock

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// Keys lock apart: a goroutine gets keys while another holds a different
// one, and waits for one that is held.
func TestKeysLockApart(t *testing.T) {
	l := New(cmp.Compare[string])
	waits := make(chan string, 1)
	l.waiting = func(k string) { waits <- k }
	unlockA := l.Lock("a")
	got := make(chan struct{})
	go func() {
		l.Lock("b", "c")() // free: no wait
		l.Lock("a")()
		close(got)
	}()
	if k := <-waits; k != "a" {
		t.Fatalf("waited for %q, want a", k)
	}
	unlockA()
	<-got
	if n := l.held(); n != 0 {
		t.Fatalf("%d keys still have a lock after every unlock", n)
	}
}

// A key named twice is locked once: locking it twice would deadlock.
func TestRepeatedKeyLocksOnce(t *testing.T) {
	l := New(cmp.Compare[string])
	l.Lock("a", "b", "a")()
	if n := l.held(); n != 0 {
		t.Fatalf("%d keys still have a lock", n)
	}
}

// Writers asking for the same keys in random orders never deadlock, and
// each key's writers take turns: the race detector sees the counters
// written under the locks alone.
func TestLockSerializesWithoutDeadlock(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	l := New(cmp.Compare[int])
	const keys, workers, rounds = 6, 8, 300
	vals := make([]int, keys)
	plans := make([][][]int, workers)
	for w := range plans {
		for range rounds {
			plans[w] = append(plans[w], rng.Perm(keys)[:1+rng.IntN(keys)])
		}
	}
	var wg sync.WaitGroup
	want := 0
	for w := range workers {
		for _, ks := range plans[w] {
			want += len(ks)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, ks := range plans[w] {
				unlock := l.Lock(ks...)
				for _, k := range ks {
					vals[k]++
				}
				unlock()
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, v := range vals {
		total += v
	}
	if total != want {
		t.Fatalf("counted %d increments, want %d", total, want)
	}
	if n := l.held(); n != 0 {
		t.Fatalf("%d keys still have a lock", n)
	}
}

func BenchmarkLock(b *testing.B) {
	l := New(cmp.Compare[string])
	b.Run("one", func(b *testing.B) {
		for b.Loop() {
			l.Lock("record-42")()
		}
	})
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprint("record-", i)
	}
	b.Run("thousand", func(b *testing.B) {
		for b.Loop() {
			l.Lock(keys...)()
		}
	})
}
