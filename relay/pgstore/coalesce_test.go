package pgstore

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"

	"github.com/ferrysync/ferry/relay"
)

// A read that arrives while another is being answered never gets that
// answer (its query may predate what woke the caller): it waits and goes
// with the next query, which the reads arriving meanwhile share. Each gets
// its own copy.
func TestLogCoalescerFreshAndShared(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		co := newLogCoalescer(func(f func()) { go f() })
		key := logKey{c: relay.Coll{Tenant: "a", Collection: "c"}, after: 5, limit: 10}
		gate := make(chan struct{})
		queries := 0
		read := func() logResult {
			queries++
			n := queries
			if n == 1 {
				<-gate
			}
			return logResult{horizon: uint64(n), entries: []relay.LogEntry{{Seq: 6, Changes: []byte("x")}}}
		}
		ctx := context.Background()
		var a, b, c logResult
		go func() { a = co.do(ctx, key, read) }()
		synctest.Wait() // a's query is under way
		go func() { b = co.do(ctx, key, read) }()
		synctest.Wait()
		go func() { c = co.do(ctx, key, read) }()
		synctest.Wait()
		cctx, cancel := context.WithCancel(ctx)
		var d logResult
		go func() { d = co.do(cctx, key, read) }()
		synctest.Wait()
		cancel()
		synctest.Wait()
		if !errors.Is(d.err, context.Canceled) {
			t.Fatalf("a canceled reader got %+v", d)
		}
		close(gate)
		synctest.Wait()
		if queries != 2 || a.horizon != 1 || b.horizon != 2 || c.horizon != 2 {
			t.Fatalf("%d queries; answers %d, %d, %d; want 2 queries, answers 1, 2, 2", queries, a.horizon, b.horizon, c.horizon)
		}
		b.entries[0].Changes[0] = 'y'
		if string(c.entries[0].Changes) != "x" {
			t.Fatal("two readers share the bytes of one answer")
		}
		// Another key is a query of its own.
		other := key
		other.after = 6
		if r := co.do(ctx, other, read); r.horizon != 3 {
			t.Fatalf("another key's answer %d, want a third query", r.horizon)
		}
	})
}
