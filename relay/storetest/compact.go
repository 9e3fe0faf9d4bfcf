package storetest

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ferrysync/ferry/relay"
)

// snapOf is the fake snapshot a test compacts a record into at seq.
func snapOf(record string, seq uint64) []byte {
	return []byte(fmt.Sprintf("snap %s@%d", record, seq))
}

// Compact folds a record's tail up to a sequence number into a snapshot;
// entries after it stay in the tail, and the record's version is
// unchanged. A compaction that lost the race, or names entries the record
// does not have, is ErrConflict and writes nothing.
func testCompact(t *testing.T, s suite) {
	st := s.store(t)
	a1, a2, a3 := entry("a", nil, "1"), entry("a", version("a", "1"), "2"), entry("a", version("a", "2"), "3")
	mustAppend(t, st, coll, 0, t0, a1)                       // 1
	mustAppend(t, st, coll, 0, t0, entry("b", nil, "1"))     // 2
	mustAppend(t, st, coll, 0, t0, a2)                       // 3
	mustAppend(t, st, coll, 0, t0, a3, entry("c", nil, "1")) // 4, 5

	if err := st.Compact(ctx(t), coll, "a", snapOf("a", 3), 3); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	checkRecord(t, st, coll, "a", snapOf("a", 3), 3, 4, "3")
	checkDoc(t, st, coll, "a", "3")
	for _, tc := range []struct {
		what string
		upTo uint64
	}{{"covered already", 3}, {"below the snapshot", 1}, {"past the record", 5}} {
		err := st.Compact(ctx(t), coll, "a", []byte("lost"), tc.upTo)
		wantErr(t, "Compact "+tc.what, err, relay.ErrConflict)
	}
	checkRecord(t, st, coll, "a", snapOf("a", 3), 3, 4, "3")
	wantErr(t, "Compact of an unknown record", st.Compact(ctx(t), coll, "x", []byte("s"), 1), relay.ErrNotFound)

	// Appends go on after a compaction, and a second one takes them.
	a4 := entry("a", a3.Heads, "4")
	mustAppend(t, st, coll, 0, t0, a4) // 6
	checkRecord(t, st, coll, "a", snapOf("a", 3), 3, 6, "3", "4")
	if err := st.Compact(ctx(t), coll, "a", snapOf("a", 6), 6); err != nil {
		t.Fatal(err)
	}
	checkRecord(t, st, coll, "a", snapOf("a", 6), 6, 6)
	// Append checks its Base against the record's heads, snapshot or not.
	_, err := st.Append(ctx(t), coll, 0, t0, []relay.Entry{entry("a", a3.Heads, "x")})
	wantErr(t, "Append on old heads after a compaction", err, relay.ErrConflict)
	mustAppend(t, st, coll, 0, t0, entry("a", a4.Heads, "5"))
	checkRecord(t, st, coll, "a", snapOf("a", 6), 6, 7, "5")
	// The log keeps every entry: compaction is not truncation.
	if l := readLog(t, st, coll, 0, 100); len(l) != 7 {
		t.Fatalf("log has %d entries after compactions, want 7", len(l))
	}
	checkRecord(t, st, coll, "b", nil, 0, 2, "1")
}

// A record is a candidate once its tail outgrows its snapshot, and stops
// being one when compacted.
func testCompactionCandidates(t *testing.T, s suite) {
	st := s.store(t)
	if cs, err := st.CompactionCandidates(ctx(t), 10); err != nil || len(cs) != 0 {
		t.Fatalf("candidates of an empty store = %v, %v", cs, err)
	}
	big := bytes.Repeat([]byte("x"), relay.CompactTailBytes)
	other := relay.Coll{Tenant: "app2", Collection: "notes"}
	var prev = map[string][]byte{}
	grow := func(c relay.Coll, record string, n int, changes []byte) {
		t.Helper()
		for i := range n {
			base := version(record, string(prev[c.Tenant+record]))
			if prev[c.Tenant+record] == nil {
				base = nil
			}
			v := fmt.Sprint(i)
			e := entry(record, base, v)
			e.Changes = append([]byte(v), changes...)
			mustAppend(t, st, c, 0, t0, e)
			prev[c.Tenant+record] = []byte(v)
		}
	}
	grow(coll, "one", 1, big)                            // one entry: never a candidate
	grow(coll, "small", 3, []byte("tiny"))               // small: not yet
	grow(coll, "bytes", 2, big)                          // tail past CompactTailBytes
	grow(other, "many", relay.CompactTailEntries+1, nil) // past CompactTailEntries
	cands, err := st.CompactionCandidates(ctx(t), 10)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, c := range cands {
		got[c.Coll.Tenant+"/"+c.Coll.Collection+"/"+c.Record] = true
	}
	if len(got) != 2 || !got["app1/notes/bytes"] || !got["app2/notes/many"] {
		t.Fatalf("candidates = %v, want app1/notes/bytes and app2/notes/many", cands)
	}
	if cs, err := st.CompactionCandidates(ctx(t), 1); err != nil || len(cs) != 1 {
		t.Fatalf("CompactionCandidates(1) = %v, %v", cs, err)
	}
	if cs, err := st.CompactionCandidates(ctx(t), 0); err != nil || len(cs) != 0 {
		t.Fatalf("CompactionCandidates(0) = %v, %v", cs, err)
	}
	r, err := st.Record(ctx(t), coll, "bytes")
	if err != nil {
		t.Fatal(err)
	}
	// A snapshot as large as the tail was: not a candidate any more.
	if err := st.Compact(ctx(t), coll, "bytes", r.Data(), r.Seq); err != nil {
		t.Fatal(err)
	}
	cands, err = st.CompactionCandidates(ctx(t), 10)
	if err != nil || len(cands) != 1 || cands[0].Record != "many" || cands[0].Coll != other {
		t.Fatalf("candidates after compacting one = %v, %v", cands, err)
	}
}

// Truncate drops the log entries that snapshots hold, never one a tail
// still needs; reading below the horizon is ErrTruncated, and records read
// as before.
func testTruncate(t *testing.T, s suite) {
	dir := t.TempDir()
	st := s.openAt(t, dir)
	mustAppend(t, st, coll, 0, t0, entry("a", nil, "1"))               // 1
	mustAppend(t, st, coll, 0, t0, entry("b", nil, "1"))               // 2
	mustAppend(t, st, coll, 0, t0, entry("a", version("a", "1"), "2")) // 3
	mustAppend(t, st, coll, 0, t0, entry("c", nil, "1"))               // 4
	truncate := func(upTo, want uint64) {
		t.Helper()
		h, err := st.Truncate(ctx(t), coll, upTo)
		if err != nil || h != want {
			t.Fatalf("Truncate(%d) = %d, %v; want horizon %d", upTo, h, err, want)
		}
	}
	truncate(3, 0) // a's tail holds entry 1
	if err := st.Compact(ctx(t), coll, "a", snapOf("a", 3), 3); err != nil {
		t.Fatal(err)
	}
	truncate(3, 1) // b's tail holds entry 2
	_, err := st.Log(ctx(t), coll, 0, 10)
	var te *relay.TruncatedError
	wantErr(t, "Log below the horizon", err, relay.ErrTruncated)
	if !asTruncated(err, &te) || te.Horizon != 1 {
		t.Fatalf("Log below the horizon: %v, want a *TruncatedError with horizon 1", err)
	}
	checkLog(t, readLog(t, st, coll, 1, 10), []relay.LogEntry{
		logged(2, entry("b", nil, "1")), logged(3, entry("a", version("a", "1"), "2")), logged(4, entry("c", nil, "1")),
	})
	if err := st.Compact(ctx(t), coll, "b", snapOf("b", 2), 2); err != nil {
		t.Fatal(err)
	}
	truncate(100, 3) // never past the head; c's tail holds entry 4
	truncate(1, 3)   // the horizon never moves back
	if h := head(t, st, coll); h != 4 {
		t.Fatalf("Head after truncation = %d, want 4", h)
	}
	mustAppend(t, st, coll, 0, t0, entry("d", nil, "1")) // 5: numbering goes on
	checkLog(t, readLog(t, st, coll, 3, 10), []relay.LogEntry{logged(4, entry("c", nil, "1")), logged(5, entry("d", nil, "1"))})
	checkRecord(t, st, coll, "a", snapOf("a", 3), 3, 3)
	checkRecord(t, st, coll, "b", snapOf("b", 2), 2, 2)
	checkRecord(t, st, coll, "c", nil, 0, 4, "1")
	stats, err := st.Stats(ctx(t))
	if err != nil || stats.LogEntries != 2 {
		t.Fatalf("Stats after truncation = %+v, %v; want 2 log entries", stats, err)
	}
	if h, err := st.Truncate(ctx(t), relay.Coll{Tenant: "app1", Collection: "empty"}, 10); err != nil || h != 0 {
		t.Fatalf("Truncate of an empty collection = %d, %v", h, err)
	}
	if !s.durable {
		return
	}
	st.Close()
	st = s.openAt(t, dir)
	_, err = st.Log(ctx(t), coll, 2, 10)
	wantErr(t, "Log below the horizon after reopen", err, relay.ErrTruncated)
	checkRecord(t, st, coll, "a", snapOf("a", 3), 3, 3)
	checkRecord(t, st, coll, "c", nil, 0, 4, "1")
	mustAppend(t, st, coll, 0, t0, entry("e", nil, "1"))
	if h := head(t, st, coll); h != 6 {
		t.Fatalf("Head after reopen = %d, want 6", h)
	}
}

func asTruncated(err error, te **relay.TruncatedError) bool {
	for err != nil {
		if x, ok := err.(*relay.TruncatedError); ok {
			*te = x
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// Compactions running while pushes append to the same records never lose
// an entry from a tail, and never put one in twice.
func testCompactDuringAppends(t *testing.T, s suite) {
	st := s.store(t)
	const records, versions = 4, 40
	var done atomic.Bool
	var wg, compactor sync.WaitGroup
	var failure atomic.Pointer[string]
	fail := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		failure.CompareAndSwap(nil, &msg)
	}
	for r := range records {
		wg.Go(func() {
			id := fmt.Sprintf("r%d", r)
			for v := 1; v <= versions; v++ {
				var base = version(id, fmt.Sprint(v-1))
				if v == 1 {
					base = nil
				}
				if _, err := st.Append(ctx(t), coll, 0, t0, []relay.Entry{entry(id, base, fmt.Sprint(v))}); err != nil {
					fail("Append %s@%d: %v", id, v, err)
					return
				}
			}
		})
	}
	compactor.Go(func() {
		for !done.Load() {
			for r := range records {
				id := fmt.Sprintf("r%d", r)
				rec, err := st.Record(ctx(t), coll, id)
				if err != nil || rec.TailEntries < 2 {
					continue
				}
				// Compact up to an entry in the middle of the tail, as a
				// compactor reading an older version would.
				upTo := rec.Seq - 1
				if upTo <= rec.SnapSeq {
					continue
				}
				if err := st.Compact(ctx(t), coll, id, snapOf(id, upTo), upTo); err != nil && !isConflict(err) {
					fail("Compact %s: %v", id, err)
				}
			}
		}
	})
	wg.Wait() // the writers; the compactor loops until done
	done.Store(true)
	compactor.Wait()
	if f := failure.Load(); f != nil {
		t.Fatal(*f)
	}
	log := readLog(t, st, coll, 0, records*versions+1)
	for r := range records {
		id := fmt.Sprintf("r%d", r)
		rec, err := st.Record(ctx(t), coll, id)
		if err != nil {
			t.Fatal(err)
		}
		var tail []byte
		n := 0
		for _, e := range log {
			if e.Record == id && e.Seq > rec.SnapSeq {
				tail = append(tail, e.Changes...)
				n++
			}
		}
		if rec.SnapSeq > 0 && !bytes.Equal(rec.Snapshot, snapOf(id, rec.SnapSeq)) {
			t.Fatalf("%s: snapshot %q at seq %d", id, rec.Snapshot, rec.SnapSeq)
		}
		if !bytes.Equal(rec.Tail, tail) || rec.TailEntries != n || !rec.Heads.Equal(version(id, fmt.Sprint(versions))) {
			t.Fatalf("%s: tail %q (%d entries) after snapshot seq %d, want %q (%d)", id, rec.Tail, rec.TailEntries, rec.SnapSeq, tail, n)
		}
	}
}

func isConflict(err error) bool {
	var ce *relay.ConflictError
	for e := err; e != nil; {
		if x, ok := e.(*relay.ConflictError); ok {
			ce = x
			break
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	return ce != nil
}

// Usage counts a tenant's stored bytes (snapshots and tails) and records,
// across its collections and no one else's.
func testUsage(t *testing.T, s suite) {
	st := s.store(t)
	if u, err := st.Usage(ctx(t), "app1"); err != nil || u != (relay.Usage{}) {
		t.Fatalf("Usage of a new tenant = %+v, %v", u, err)
	}
	a1 := entry("a", nil, "1")
	mustAppend(t, st, coll, 0, t0, a1, entry("b", nil, "1"))
	mustAppend(t, st, relay.Coll{Tenant: "app1", Collection: "tasks"}, 0, t0, entry("a", nil, "1"))
	mustAppend(t, st, relay.Coll{Tenant: "app2", Collection: "notes"}, 0, t0, entry("z", nil, "1"))
	mustAppend(t, st, coll, 0, t0, entry("a", a1.Heads, "2"))
	n := int64(len(entry("a", nil, "1").Changes))
	want := relay.Usage{Bytes: 4 * n, Records: 3}
	if u, err := st.Usage(ctx(t), "app1"); err != nil || u != want {
		t.Fatalf("Usage(app1) = %+v, %v; want %+v", u, err, want)
	}
	// Compaction replaces tail bytes with snapshot bytes.
	snap := []byte("a snapshot of some length")
	if err := st.Compact(ctx(t), coll, "a", snap, 3); err != nil {
		t.Fatal(err)
	}
	want.Bytes = 2*n + int64(len(snap))
	if u, err := st.Usage(ctx(t), "app1"); err != nil || u != want {
		t.Fatalf("Usage(app1) after compaction = %+v, %v; want %+v", u, err, want)
	}
	if u, err := st.Usage(ctx(t), "app2"); err != nil || u != (relay.Usage{Bytes: n, Records: 1}) {
		t.Fatalf("Usage(app2) = %+v, %v", u, err)
	}
	if u, err := st.Usage(ctx(t), "app"); err != nil || u != (relay.Usage{}) {
		t.Fatalf("Usage of a tenant whose name prefixes others = %+v, %v", u, err)
	}
}
