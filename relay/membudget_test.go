package relay

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// TestMemBudgetWaitIsBounded checks that work past the budget waits for
// room, is let in as soon as room is released, and is refused with
// errBusy once MemoryWait has passed without room.
func TestMemBudgetWaitIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const wait = 2 * time.Second
		b := newMemBudget(100, wait)
		refused := 0
		b.refused = func() { refused++ }
		held, err := b.acquire(t.Context(), 80)
		if err != nil {
			t.Fatal(err)
		}

		// Nothing is released: refused after exactly the wait.
		start := time.Now()
		if _, err := b.acquire(t.Context(), 50); !errors.Is(err, errBusy) {
			t.Fatalf("acquire past the budget: %v, want errBusy", err)
		}
		if waited := time.Since(start); waited != wait {
			t.Errorf("refused after %v, want %v", waited, wait)
		}
		if refused != 1 || b.inUse() != 80 || len(b.waiters) != 0 {
			t.Errorf("after a refusal: %d refusals, %d in use, %d waiting", refused, b.inUse(), len(b.waiters))
		}

		// Room released during the wait: let in then.
		type res struct {
			g   *memGrant
			err error
			at  time.Duration
		}
		got := make(chan res)
		start = time.Now()
		go func() {
			g, err := b.acquire(t.Context(), 50)
			got <- res{g, err, time.Since(start)}
		}()
		synctest.Wait() // the acquire is waiting
		time.Sleep(wait / 2)
		held.release()
		r := <-got
		if r.err != nil || r.at != wait/2 || b.inUse() != 50 {
			t.Fatalf("acquire after a release: %v after %v, %d in use", r.err, r.at, b.inUse())
		}
		r.g.release()
		if b.inUse() != 0 {
			t.Errorf("%d in use once all is released", b.inUse())
		}
	})
}

// TestMemBudgetOrder checks that waiters are let in in the order they
// came, that a request larger than the budget is let in alone, and that
// closing the budget turns every waiter away.
func TestMemBudgetOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newMemBudget(100, time.Hour)
		first, _ := b.acquire(t.Context(), 100)
		order := make(chan int64, 3)
		grants := make(chan *memGrant, 3)
		for _, n := range []int64{250, 10} { // the large one first
			go func() {
				g, err := b.acquire(t.Context(), n)
				if err != nil {
					t.Error(err)
					return
				}
				order <- n
				grants <- g
			}()
			synctest.Wait()
		}
		// 10 would fit in what first leaves if it shrank, but waits
		// behind 250, which waits for the budget to be empty.
		first.set(50)
		synctest.Wait()
		if len(order) != 0 {
			t.Fatalf("%d let in before the budget emptied", <-order)
		}
		first.release()
		if n := <-order; n != 250 {
			t.Fatalf("%d let in first, want 250 (alone)", n)
		}
		synctest.Wait()
		if len(order) != 0 || b.inUse() != 250 {
			t.Fatalf("the small request got in beside the oversized one: %d in use", b.inUse())
		}
		(<-grants).release()
		if n := <-order; n != 10 {
			t.Fatalf("then %d, want 10", n)
		}
		(<-grants).release()

		held, _ := b.acquire(t.Context(), 100)
		done := make(chan error)
		go func() {
			_, err := b.acquire(t.Context(), 1)
			done <- err
		}()
		synctest.Wait()
		b.close()
		if err := <-done; !errors.Is(err, errBudgetClosed) {
			t.Errorf("waiting when the budget closed: %v", err)
		}
		held.release()
		if b.inUse() != 0 {
			t.Errorf("%d in use after everything was released", b.inUse())
		}
	})
}

// TestMemBudgetReclaim checks that work that does not fit asks reclaim
// for room before it waits, and gets in if reclaim makes it.
func TestMemBudgetReclaim(t *testing.T) {
	b := newMemBudget(100, time.Hour)
	cached := b.charge(90)
	asked := int64(0)
	b.reclaim = func(n int64) { asked = n; cached.release() }
	g, err := b.acquire(t.Context(), 30)
	if err != nil || asked != 30 || b.inUse() != 30 {
		t.Fatalf("acquire with reclaim: %v; asked %d, %d in use", err, asked, b.inUse())
	}
	g.release()
}

// FuzzMemBudget runs sequences of acquires, charges, resizes, releases
// and canceled waits, and checks that what the budget counts in use is
// never negative, always the sum of the grants held, and zero once they
// are all released, with nobody left waiting.
func FuzzMemBudget(f *testing.F) {
	f.Add([]byte{0, 10, 0, 200, 1, 50, 3, 0, 2, 1, 4, 2})
	f.Add([]byte{1, 255, 0, 1, 0, 255, 4, 0, 3, 1, 2, 0, 0, 7})
	f.Fuzz(func(t *testing.T, ops []byte) {
		b := newMemBudget(300, time.Hour)
		canceled, cancel := context.WithCancel(context.Background())
		cancel()
		var grants []*memGrant
		check := func(step int) {
			var sum int64
			for _, g := range grants {
				sum += g.size()
			}
			if used := b.inUse(); used < 0 || used != sum {
				t.Fatalf("step %d: %d in use, grants hold %d", step, used, sum)
			}
		}
		for i := 0; i+1 < len(ops); i += 2 {
			n := int64(ops[i+1]) * 3
			switch ops[i] % 5 {
			case 0: // acquire; if it must wait, its wait is canceled
				g, err := b.acquire(canceled, n)
				if err == nil {
					grants = append(grants, g)
				} else if !errors.Is(err, context.Canceled) {
					t.Fatalf("step %d: acquire %d: %v", i, n, err)
				}
			case 1:
				grants = append(grants, b.charge(n))
			case 2, 3: // release one, twice
				if len(grants) > 0 {
					k := int(n) % len(grants)
					g := grants[k]
					g.release()
					g.release()
					grants = append(grants[:k], grants[k+1:]...)
				}
			case 4:
				if len(grants) > 0 {
					grants[int(n)%len(grants)].set(n - 100)
				}
			}
			check(i)
		}
		for _, g := range grants {
			g.release()
		}
		grants = nil
		check(len(ops))
		if len(b.waiters) != 0 {
			t.Fatalf("%d waiters left", len(b.waiters))
		}
	})
}

// TestMemBudgetFreedSignal checks that the budget signals, without ever
// blocking, once grants have given back a fifth of it.
func TestMemBudgetFreedSignal(t *testing.T) {
	b := newMemBudget(100, time.Hour)
	b.freedSignal = make(chan struct{}, 1)
	g := b.charge(100)
	g.set(81) // 19 given back
	if len(b.freedSignal) != 0 {
		t.Fatal("signaled before a fifth was given back")
	}
	g.set(80)
	if len(b.freedSignal) != 1 {
		t.Fatal("no signal once a fifth was given back")
	}
	g.release() // 80 more: a signal is due, and the channel is full
	if len(b.freedSignal) != 1 || b.inUse() != 0 {
		t.Fatalf("%d signals waiting, %d in use", len(b.freedSignal), b.inUse())
	}
}
