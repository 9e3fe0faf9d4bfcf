package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// Sizes of the concurrent tests: enough to interleave under -race on two
// cores, small enough for a store that fsyncs every Append.
const (
	workers = 8
	rounds  = 12
)

// goAll runs fn(0..n-1) on n goroutines released together, and waits.
func goAll(n int, fn func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			fn(i)
		}()
	}
	close(start)
	wg.Wait()
}

// Appends of distinct records from many goroutines all succeed, each with
// its own sequence numbers, and the log has no gap or duplicate. An Append of
// two entries gets two consecutive numbers: nothing interleaves inside it.
func testConcurrentAppends(t *testing.T, s suite) {
	st := s.store(t)
	type result struct {
		head uint64
		es   []relay.Entry
		err  error
	}
	results := make([][]result, workers)
	goAll(workers, func(w int) {
		for i := range rounds {
			es := []relay.Entry{entry(fmt.Sprintf("w%d-%d", w, i), nil, "1")}
			if i%2 == 1 {
				es = append(es, entry(fmt.Sprintf("w%d-%d-bis", w, i), nil, "1"))
			}
			h, err := st.Append(context.Background(), coll, 0, t0, es)
			results[w] = append(results[w], result{h, es, err})
		}
	})
	bySeq := make(map[uint64]relay.Entry)
	for w := range results {
		var last uint64
		for _, r := range results[w] {
			if r.err != nil {
				t.Fatalf("Append of a distinct record failed: %v", r.err)
			}
			if r.head <= last {
				t.Fatalf("worker %d: head %d after %d", w, r.head, last)
			}
			last = r.head
			for j, e := range r.es {
				seq := r.head - uint64(len(r.es)-1-j)
				if prev, dup := bySeq[seq]; dup {
					t.Fatalf("seq %d returned for %s and %s", seq, prev.Record, e.Record)
				}
				bySeq[seq] = e
			}
		}
	}
	total := uint64(len(bySeq))
	if h := head(t, st, coll); h != total {
		t.Fatalf("Head = %d, want %d", h, total)
	}
	var want []relay.LogEntry
	for seq := uint64(1); seq <= total; seq++ {
		e, ok := bySeq[seq]
		if !ok {
			t.Fatalf("no Append returned seq %d (of %d)", seq, total)
		}
		want = append(want, logged(seq, e))
	}
	checkLog(t, readLog(t, st, coll, 0, int(total)+10), want)
}

// Pushes to one record on the same Base: exactly one wins each round, the
// others get ErrConflict, and only the winner is logged.
func testConcurrentSameRecord(t *testing.T, s suite) {
	st := s.store(t)
	var base crdt.Heads
	for round := range 4 {
		errs := make([]error, workers)
		goAll(workers, func(w int) {
			_, errs[w] = st.Append(context.Background(), coll, 0, t0,
				[]relay.Entry{entry("r", base, fmt.Sprintf("%d.%d", round, w))})
		})
		winner := -1
		for w, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("round %d: workers %d and %d both won", round, winner, w)
			case err == nil:
				winner = w
			case !errors.Is(err, relay.ErrConflict):
				t.Fatalf("round %d: loser got %v, want ErrConflict", round, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: nobody won", round)
		}
		v := fmt.Sprintf("%d.%d", round, winner)
		checkDoc(t, st, coll, "r", v)
		if h := head(t, st, coll); h != uint64(round+1) {
			t.Fatalf("round %d: Head = %d, want %d", round, h, round+1)
		}
		base = version("r", v)
	}
}

// Holders racing for a free lease: exactly one gets it, each time with a
// higher fence, and the others learn who won.
func testConcurrentAcquire(t *testing.T, s suite) {
	st := s.store(t)
	var last uint64
	now := t0
	for round := range 4 {
		leases := make([]relay.Lease, workers)
		errs := make([]error, workers)
		goAll(workers, func(w int) {
			leases[w], errs[w] = st.Acquire(context.Background(), coll, fmt.Sprintf("dev%d", w), time.Minute, now)
		})
		winner := -1
		for w, err := range errs {
			if err == nil {
				if winner >= 0 {
					t.Fatalf("round %d: dev%d and dev%d both hold the lease", round, winner, w)
				}
				winner = w
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: nobody got the lease: %v", round, errs)
		}
		for w, err := range errs {
			if w != winner {
				leaseHeld(t, fmt.Sprintf("round %d dev%d", round, w), err, leases[winner])
			}
		}
		if leases[winner].Fence <= last {
			t.Fatalf("round %d: fence %d after %d", round, leases[winner].Fence, last)
		}
		last = leases[winner].Fence
		now = now.Add(time.Hour) // past expiry
	}
}

// The fence check and the append are one step: once a new holder's Acquire
// has returned, no Append with the old fence succeeds, and the log never
// shows an old holder's entry after a new holder's.
func testConcurrentTakeover(t *testing.T, s suite) {
	st := s.store(t)
	la := mustAcquire(t, st, coll, "devA", time.Minute, t0)
	var (
		takenOver  atomic.Bool
		firstAOK   = make(chan struct{})
		firstOnce  sync.Once
		aOK, bOK   atomic.Int64
		lateA      atomic.Int64 // old-fence appends that started after takeover and succeeded
		otherError atomic.Value
	)
	goAll(workers, func(w int) {
		if w == 0 {
			// The new holder: waits for the old one to be appending, then
			// takes over (the old lease has expired by its clock).
			<-firstAOK
			now := la.Expires.Add(time.Second)
			lb, err := st.Acquire(context.Background(), coll, "devB", time.Minute, now)
			if err != nil {
				otherError.Store(err)
				return
			}
			takenOver.Store(true)
			for i := range rounds {
				if _, err := st.Append(context.Background(), coll, lb.Fence, now,
					[]relay.Entry{entry(fmt.Sprintf("b-%d", i), nil, "1")}); err != nil {
					otherError.Store(err)
					return
				}
				bOK.Add(1)
			}
			return
		}
		// The old holder, whose clock says its lease is still valid.
		for i := range 3 * rounds {
			after := takenOver.Load()
			_, err := st.Append(context.Background(), coll, la.Fence, t0.Add(time.Second),
				[]relay.Entry{entry(fmt.Sprintf("a-%d-%d", w, i), nil, "1")})
			switch {
			case err == nil:
				aOK.Add(1)
				if after {
					lateA.Add(1)
				}
				firstOnce.Do(func() { close(firstAOK) })
			case !errors.Is(err, relay.ErrStaleFence):
				otherError.Store(err)
			}
		}
		firstOnce.Do(func() { close(firstAOK) }) // never leave the new holder waiting
	})
	if err := otherError.Load(); err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
	if n := lateA.Load(); n > 0 {
		t.Fatalf("%d appends with the old fence succeeded after the takeover", n)
	}
	log := readLog(t, st, coll, 0, 10000)
	var seenB bool
	var nA, nB int64
	for _, e := range log {
		switch {
		case strings.HasPrefix(e.Record, "b-"):
			seenB = true
			nB++
		case seenB:
			t.Fatalf("old holder's %s logged at seq %d after the new holder's entries", e.Record, e.Seq)
		default:
			nA++
		}
	}
	if nA != aOK.Load() || nB != bOK.Load() || nB != rounds {
		t.Fatalf("log holds %d old and %d new entries; appends returned %d and %d", nA, nB, aOK.Load(), bOK.Load())
	}
}

// Readers running beside writers always see a log without gaps, and never a
// document or head ahead of the log.
func testConcurrentReaders(t *testing.T, s suite) {
	st := s.store(t)
	const writers = 2
	var done atomic.Int32
	var failure atomic.Value
	fail := func(format string, a ...any) { failure.CompareAndSwap(nil, fmt.Sprintf(format, a...)) }
	goAll(writers+2, func(w int) {
		if w < writers {
			defer done.Add(1)
			var base crdt.Heads
			for i := range rounds {
				e := entry(fmt.Sprintf("w%d", w), base, fmt.Sprint(i))
				if _, err := st.Append(context.Background(), coll, 0, t0, []relay.Entry{e}); err != nil {
					fail("Append: %v", err)
					return
				}
				base = e.Heads
			}
			return
		}
		for done.Load() < writers && failure.Load() == nil {
			h, err := st.Head(context.Background(), coll)
			if err != nil {
				fail("Head: %v", err)
				return
			}
			snaps, err := st.Records(context.Background(), coll, "", 10)
			if err != nil {
				fail("Records: %v", err)
				return
			}
			log, err := st.Log(context.Background(), coll, 0, 1000)
			if err != nil {
				fail("Log: %v", err)
				return
			}
			if uint64(len(log)) < h {
				fail("Log has %d entries after Head said %d", len(log), h)
			}
			for i, e := range log {
				if e.Seq != uint64(i+1) {
					fail("Log entry %d has seq %d", i, e.Seq)
				}
			}
			for _, sn := range snaps {
				if sn.Seq == 0 || sn.Seq > uint64(len(log)) || log[sn.Seq-1].Record != sn.ID || !log[sn.Seq-1].Heads.Equal(sn.Heads) {
					fail("record %s at seq %d does not match the log read after it", sn.ID, sn.Seq)
				}
			}
		}
	})
	if f := failure.Load(); f != nil {
		t.Fatal(f)
	}
	if h := head(t, st, coll); h != writers*rounds {
		t.Fatalf("Head = %d, want %d", h, writers*rounds)
	}
}

func testStats(t *testing.T, s suite) {
	st := s.store(t)
	stats := func() relay.StoreStats {
		t.Helper()
		ss, err := st.Stats(ctx(t))
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		if ss.Bytes < 0 {
			t.Fatalf("Stats.Bytes = %d", ss.Bytes)
		}
		return ss
	}
	if n := stats().LogEntries; n != 0 {
		t.Fatalf("LogEntries of an empty store = %d", n)
	}
	a1 := entry("a", nil, "1")
	mustAppend(t, st, coll, 0, t0, a1, entry("b", nil, "1"))
	mustAppend(t, st, coll, 0, t0, entry("a", a1.Heads, "2"))
	mustAppend(t, st, relay.Coll{Tenant: "app2", Collection: "notes"}, 0, t0, entry("a", nil, "1"))
	mustAppend(t, st, relay.Coll{Tenant: "app1", Collection: "tasks"}, 0, t0, entry("a", nil, "1"))
	// Refused appends add nothing.
	_, err := st.Append(ctx(t), coll, 0, t0, []relay.Entry{entry("c", nil, "1"), entry("a", nil, "3")})
	wantErr(t, "conflicting Append", err, relay.ErrConflict)
	_, err = st.Append(ctx(t), coll, 99, t0, []relay.Entry{entry("d", nil, "1")})
	wantErr(t, "fenced Append", err, relay.ErrStaleFence)
	if n := stats().LogEntries; n != 5 {
		t.Fatalf("LogEntries = %d, want 5", n)
	}
}

// A cancelled context fails a call before it does anything.
func testContext(t *testing.T, s suite) {
	st := s.store(t)
	c, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := st.Append(c, coll, 0, t0, []relay.Entry{entry("a", nil, "1")})
	wantErr(t, "Append", err, context.Canceled)
	_, err = st.Acquire(c, coll, "dev1", time.Minute, t0)
	wantErr(t, "Acquire", err, context.Canceled)
	checkNoDoc(t, st, coll, "a")
	l := mustAcquire(t, st, coll, "dev2", time.Minute, t0) // the cancelled Acquire took nothing

	_, err = st.Record(c, coll, "a")
	wantErr(t, "Record", err, context.Canceled)
	_, err = st.Log(c, coll, 0, 10)
	wantErr(t, "Log", err, context.Canceled)
	_, err = st.Head(c, coll)
	wantErr(t, "Head", err, context.Canceled)
	_, err = st.Records(c, coll, "", 10)
	wantErr(t, "Records", err, context.Canceled)
	_, err = st.Renew(c, coll, "dev2", l.Fence, time.Minute, t0)
	wantErr(t, "Renew", err, context.Canceled)
	err = st.Release(c, coll, "dev2", l.Fence)
	wantErr(t, "Release", err, context.Canceled)
	_, err = st.Stats(c)
	wantErr(t, "Stats", err, context.Canceled)
	mustAppend(t, st, coll, l.Fence, t0, entry("a", nil, "1")) // the cancelled Release released nothing
}

func testClose(t *testing.T, s suite) {
	st := s.store(t)
	mustAppend(t, st, coll, 0, t0, entry("a", nil, "1"))
	l := mustAcquire(t, st, coll, "dev1", time.Minute, t0)
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	c := context.Background()
	_, err := st.Append(c, coll, 0, t0, []relay.Entry{entry("b", nil, "1")})
	wantErr(t, "Append after Close", err, relay.ErrStoreClosed)
	_, err = st.Record(c, coll, "a")
	wantErr(t, "Record after Close", err, relay.ErrStoreClosed)
	_, err = st.Log(c, coll, 0, 10)
	wantErr(t, "Log after Close", err, relay.ErrStoreClosed)
	_, err = st.Head(c, coll)
	wantErr(t, "Head after Close", err, relay.ErrStoreClosed)
	_, err = st.Records(c, coll, "", 10)
	wantErr(t, "Records after Close", err, relay.ErrStoreClosed)
	_, err = st.Acquire(c, coll, "dev2", time.Minute, t0)
	wantErr(t, "Acquire after Close", err, relay.ErrStoreClosed)
	_, err = st.Renew(c, coll, "dev1", l.Fence, time.Minute, t0)
	wantErr(t, "Renew after Close", err, relay.ErrStoreClosed)
	wantErr(t, "Release after Close", st.Release(c, coll, "dev1", l.Fence), relay.ErrStoreClosed)
	_, err = st.Stats(c)
	wantErr(t, "Stats after Close", err, relay.ErrStoreClosed)
	if err := st.Close(); err != nil && !errors.Is(err, relay.ErrStoreClosed) {
		t.Fatalf("second Close: %v", err)
	}
}

// Close while appends are in flight: each one either succeeds (and, in a
// durable store, is there after a reopen) or fails with ErrStoreClosed.
func testCloseWhileBusy(t *testing.T, s suite) {
	dir := t.TempDir()
	st := s.openAt(t, dir)
	var ok atomic.Int64
	var once sync.Once
	firstOK := make(chan struct{})
	errs := make([]error, workers)
	goAll(workers, func(w int) {
		if w == 0 {
			<-firstOK
			if err := st.Close(); err != nil {
				errs[w] = err
			}
			return
		}
		for i := 0; ; i++ {
			if i == 1<<16 {
				errs[w] = errors.New("Appends still succeed long after Close began")
				return
			}
			_, err := st.Append(context.Background(), coll, 0, t0,
				[]relay.Entry{entry(fmt.Sprintf("w%d-%d", w, i), nil, "1")})
			if err != nil {
				errs[w] = err
				once.Do(func() { close(firstOK) }) // never leave Close waiting
				return
			}
			ok.Add(1)
			once.Do(func() { close(firstOK) })
		}
	})
	if errs[0] != nil {
		t.Fatalf("Close: %v", errs[0])
	}
	for w, err := range errs[1:] {
		wantErr(t, fmt.Sprintf("worker %d", w+1), err, relay.ErrStoreClosed)
	}
	if !s.durable {
		return
	}
	st = s.openAt(t, dir)
	if h := head(t, st, coll); h != uint64(ok.Load()) {
		t.Fatalf("Head after reopen = %d, but %d appends succeeded", h, ok.Load())
	}
}
