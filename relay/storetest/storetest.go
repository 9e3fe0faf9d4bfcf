// Package storetest is the conformance suite of relay.Store: every
// implementation (in memory, Badger, PostgreSQL) must pass it, so the relay
// behaves the same on each. Bench measures every implementation the same
// way.
//
// A store's test calls Run (or RunVolatile) with a function that opens the
// store keeping its data under dir:
//
//	func TestBadgerStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T, dir string) relay.Store {
//			s, err := badgerstore.Open(dir, nil)
//			if err != nil {
//				t.Fatal(err)
//			}
//			return s
//		})
//	}
//
// Time is passed to the store (the now arguments), so lease expiry is tested
// without sleeping. Run the suite with -race: it appends from many goroutines.
//
// Beyond the sentences of the Store docs, the suite pins down what a second
// implementation could otherwise choose differently:
//
//   - A lease is held while now is before Expires; at Expires it has lapsed,
//     for Append, Acquire and Renew alike.
//   - Entries of one Append apply in order: a second entry for a record is
//     checked against the first one's heads. A refused Append uses up no
//     sequence number.
//   - Errors carry details: ErrConflict as *relay.ConflictError (the record),
//     ErrLeaseHeld as *relay.LeaseHeldError (the current lease). Empty names,
//     names with NUL, entries without changes or heads, an empty holder and a
//     non-positive TTL are relay.ErrInvalidArg.
//   - Records sorts record IDs as bytes (PostgreSQL: COLLATE "C").
//   - Log and Records with limit <= 0 return nothing; CompactionCandidates
//     with limit <= 0 returns nothing.
//   - A record's tail holds the changes of its entries after SnapSeq,
//     concatenated in log order; Compact never changes a record's heads or
//     Seq, and Append never disturbs a snapshot.
//   - A cancelled context fails a call before it does anything.
//   - Appends of distinct records never fail for being concurrent: a store
//     that can hit serialization failures retries them itself.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// Opener opens the store whose data lives under dir. Opening a fresh dir
// gives an empty store; opening a dir again after Close gives the data
// written before (for a store kept elsewhere, such as PostgreSQL, dir is a
// key naming the database or schema). The suite closes every store it opens;
// the opener may also close it in t.Cleanup, as Close must be idempotent.
// It is called in the goroutine of the test it is given, one call at a
// time.
type Opener func(t *testing.T, dir string) relay.Store

// Run runs the whole suite against a durable store, including the tests
// that close the store and open it again on the same dir.
func Run(t *testing.T, open Opener) {
	run(t, suite{open: open, durable: true})
}

// RunVolatile runs the suite against a store whose data does not survive
// Close (such as memstore.Store): the reopen tests are skipped, and open
// may ignore dir.
func RunVolatile(t *testing.T, open Opener) {
	run(t, suite{open: open})
}

type suite struct {
	open    Opener
	durable bool
}

func run(t *testing.T, s suite) {
	tests := []struct {
		name string
		fn   func(*testing.T, suite)
	}{
		{"Incarnation", testIncarnation},
		{"AppendSequence", testAppendSequence},
		{"AppendInvalid", testAppendInvalid},
		{"BaseChecks", testBaseChecks},
		{"ConflictWritesNothing", testConflictWritesNothing},
		{"SameRecordTwiceInOneAppend", testSameRecordTwice},
		{"Record", testRecord},
		{"NoAliasing", testNoAliasing},
		{"LogPaging", testLogPaging},
		{"Records", testRecords},
		{"RecordOrderIsBytewise", testRecordOrder},
		{"Compact", testCompact},
		{"CompactionCandidates", testCompactionCandidates},
		{"Truncate", testTruncate},
		{"CompactDuringAppends", testCompactDuringAppends},
		{"Usage", testUsage},
		{"Isolation", testIsolation},
		{"FenceZero", testFenceZero},
		{"FenceCurrent", testFenceCurrent},
		{"StaleFence", testStaleFence},
		{"Acquire", testAcquire},
		{"AcquireExpiry", testAcquireExpiry},
		{"Renew", testRenew},
		{"Release", testRelease},
		{"LeaseBoundToHolder", testLeaseBoundToHolder},
		{"LeaseInvalid", testLeaseInvalid},
		{"FencesOnlyGrow", testFencesOnlyGrow},
		{"Reopen", testReopen},
		{"ConcurrentAppends", testConcurrentAppends},
		{"ConcurrentSameRecord", testConcurrentSameRecord},
		{"ConcurrentAcquire", testConcurrentAcquire},
		{"ConcurrentTakeover", testConcurrentTakeover},
		{"ConcurrentReaders", testConcurrentReaders},
		{"Stats", testStats},
		{"Context", testContext},
		{"Close", testClose},
		{"CloseWhileBusy", testCloseWhileBusy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, s) })
	}
}

// store opens an empty store, closed when the test ends.
func (s suite) store(t *testing.T) relay.Store {
	t.Helper()
	return s.openAt(t, t.TempDir())
}

func (s suite) openAt(t *testing.T, dir string) relay.Store {
	t.Helper()
	st := s.open(t, dir)
	if st == nil {
		t.Fatal("open returned a nil store")
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// t0 is the suite's clock origin; every now is t0 plus something.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// coll is the default collection of a test.
var coll = relay.Coll{Tenant: "app1", Collection: "notes"}

// hash makes a deterministic change hash; the store never parses changes.
func hash(s string) crdt.Hash { return crdt.Hash(sha256.Sum256([]byte(s))) }

// version is the heads of a record after its version v.
func version(record, v string) crdt.Heads { return crdt.Heads{hash(record + "@" + v)} }

// entry moves record from base to version v; the bytes are fakes named after
// both, so a mix-up shows in the data.
func entry(record string, base crdt.Heads, v string) relay.Entry {
	return relay.Entry{
		Record:  record,
		Base:    base,
		Changes: []byte("changes " + record + "@" + v),
		Hashes:  []crdt.Hash{hash(record + "@" + v)},
		Heads:   version(record, v),
	}
}

func ctx(t *testing.T) context.Context { return t.Context() }

func mustAppend(t *testing.T, st relay.Store, c relay.Coll, fence uint64, now time.Time, es ...relay.Entry) uint64 {
	t.Helper()
	head, err := st.Append(ctx(t), c, fence, now, es)
	if err != nil {
		t.Fatalf("Append(%s/%s, fence %d): %v", c.Tenant, c.Collection, fence, err)
	}
	return head
}

func mustAcquire(t *testing.T, st relay.Store, c relay.Coll, holder string, ttl time.Duration, now time.Time) relay.Lease {
	t.Helper()
	l, err := st.Acquire(ctx(t), c, holder, ttl, now)
	if err != nil {
		t.Fatalf("Acquire(%s, %s): %v", c.Collection, holder, err)
	}
	if l.Holder != holder || l.Fence == 0 || !l.Expires.Equal(now.Add(ttl)) {
		t.Fatalf("Acquire(%s, %s, %v) = %+v", c.Collection, holder, ttl, l)
	}
	return l
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: err = %v, want %v", what, err, want)
	}
}

func head(t *testing.T, st relay.Store, c relay.Coll) uint64 {
	t.Helper()
	h, err := st.Head(ctx(t), c)
	if err != nil {
		t.Fatalf("Head: %v", err)
	}
	return h
}

func readLog(t *testing.T, st relay.Store, c relay.Coll, after uint64, limit int) []relay.LogEntry {
	t.Helper()
	l, err := st.Log(ctx(t), c, after, limit)
	if err != nil {
		t.Fatalf("Log(%d, %d): %v", after, limit, err)
	}
	return l
}

// logged is the log entry an Append of e made at seq.
func logged(seq uint64, e relay.Entry) relay.LogEntry {
	return relay.LogEntry{Seq: seq, Record: e.Record, Changes: e.Changes, Heads: e.Heads}
}

func checkLog(t *testing.T, got, want []relay.LogEntry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("log has %d entries, want %d:\n got %s\nwant %s", len(got), len(want), fmtLog(got), fmtLog(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Seq != w.Seq || g.Record != w.Record || !bytes.Equal(g.Changes, w.Changes) || !g.Heads.Equal(w.Heads) {
			t.Fatalf("log entry %d differs:\n got %s\nwant %s", i, fmtLog(got), fmtLog(want))
		}
	}
}

func fmtLog(l []relay.LogEntry) string {
	var b bytes.Buffer
	for _, e := range l {
		fmt.Fprintf(&b, "[%d %s %q] ", e.Seq, e.Record, e.Changes)
	}
	return b.String()
}

// checkDoc asserts the record is at version v of it: its heads are v's,
// and its data ends with v's changes.
func checkDoc(t *testing.T, st relay.Store, c relay.Coll, record, v string) {
	t.Helper()
	r, err := st.Record(ctx(t), c, record)
	if err != nil {
		t.Fatalf("Record(%s): %v", record, err)
	}
	want := entry(record, nil, v)
	if r.ID != record || !bytes.HasSuffix(r.Data(), want.Changes) || !r.Heads.Equal(want.Heads) {
		t.Fatalf("Record(%s) = %q %v, want data ending %q, heads %v", record, r.Data(), r.Heads, want.Changes, want.Heads)
	}
}

// checkRecord asserts the record as stored: its snapshot (nil for none)
// and the changes of the versions in its tail.
func checkRecord(t *testing.T, st relay.Store, c relay.Coll, record string, snap []byte, snapSeq, seq uint64, tail ...string) relay.Record {
	t.Helper()
	r, err := st.Record(ctx(t), c, record)
	if err != nil {
		t.Fatalf("Record(%s): %v", record, err)
	}
	var wantTail []byte
	for _, v := range tail {
		wantTail = append(wantTail, entry(record, nil, v).Changes...)
	}
	if !bytes.Equal(r.Snapshot, snap) || r.SnapSeq != snapSeq || r.Seq != seq || !bytes.Equal(r.Tail, wantTail) || r.TailEntries != len(tail) {
		t.Fatalf("Record(%s) = snapshot %q (seq %d), tail %q (%d entries), seq %d;\nwant snapshot %q (seq %d), tail %q (%d entries), seq %d",
			record, r.Snapshot, r.SnapSeq, r.Tail, r.TailEntries, r.Seq, snap, snapSeq, wantTail, len(tail), seq)
	}
	if want := append(append([]byte(nil), snap...), wantTail...); !bytes.Equal(r.Data(), want) || r.Size() != len(want) {
		t.Fatalf("Record(%s).Data() = %q, want %q", record, r.Data(), want)
	}
	return r
}

func checkNoDoc(t *testing.T, st relay.Store, c relay.Coll, record string) {
	t.Helper()
	_, err := st.Record(ctx(t), c, record)
	wantErr(t, "Record("+record+")", err, relay.ErrNotFound)
}
