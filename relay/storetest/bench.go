package storetest

import (
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// BenchOpener opens an empty store for a benchmark, keeping its data under
// dir (a fresh b.TempDir(); for a store kept elsewhere, a key naming the
// database or schema). Bench closes the store when the benchmark ends; the
// opener may also close it in b.Cleanup.
type BenchOpener func(b *testing.B, dir string) relay.Store

// Bench measures a relay.Store's operations, the same way for every
// implementation, so their figures compare:
//
//	func BenchmarkBadgerStore(b *testing.B) {
//		storetest.Bench(b, func(b *testing.B, dir string) relay.Store {
//			s, err := relay.OpenBadgerStore(dir, nil)
//			if err != nil {
//				b.Fatal(err)
//			}
//			return s
//		})
//	}
//
// Each sub-benchmark opens a store, fills it outside the timed loop, and
// times one operation per iteration; SetBytes is the change bytes an
// iteration appends, reads or drops, so MB/s compares across them. The
// changes are BenchChangeSize bytes each, a single-field update's size;
// stores never parse them.
//
//   - Append/history=0: one entry per call, each a new record.
//   - Append/history=10000: one entry per call to one record that had
//     10,000 entries before the timing began (and gains one per call). A
//     push costs what it adds, so this matches history=0.
//   - Append/history=10000-compacted: the same with the record's 10,000
//     entries appended one per call and folded into its snapshot 256 at a
//     time, as the relay stores and compacts a live record.
//   - Append/records=10000: one entry per call, round-robin over 10,000
//     records.
//   - AppendBatch/entries=100/records=100: 100 new records in one call.
//   - AppendBatch/entries=100/records=1: 100 successive entries of one
//     record in one call.
//   - Log/limit=100: a page of 100 entries of a 10,000-entry log.
//   - Log/newest: the newest entry of that log, as a live subscriber reads
//     it.
//   - Record/tail=N: a record with a 16 KiB snapshot and N tail entries
//     (CompactTailEntries, 256, is the most a tail holds before the
//     record is a compaction candidate whatever its bytes).
//   - Record/tail=16/history=10000: the same with a tail of 16 after
//     10,000 earlier entries, appended one per call and folded 256 at a
//     time as the relay does; a read should cost what the record holds,
//     and match Record/tail=16.
//   - Records/limit=100: pages of 100 of 1,000 records, each a 1 KiB
//     snapshot and 2 tail entries.
//   - CompactionCandidates/records=1000: the compactor's scan (limit 64)
//     of a store of 1,000 records, 100 of them candidates.
//   - CompactionCandidates/history=10000: the same, after 10,000 more
//     entries of one record, appended and folded as above; it should
//     match records=1000.
//   - Compact/tail=N: folding a new record's N-entry tail into a
//     snapshot.
//   - Compact/tail=256/history=10000: the same for a record with 10,000
//     earlier entries, appended and folded as above; it should match
//     Compact/tail=256.
//   - Truncate/entries=1000: dropping 1,000 entries of 4 compacted
//     records.
//
// Compact and Truncate need a tail or a log made before each operation,
// which costs more than the operation: their ns/op, MB/s, B/op and
// allocs/op are the operation's alone, measured around it (see opMeter).
//
// Allocations include the benchmark's own: Append/history=0 and
// AppendBatch make a record name per new record.
func Bench(b *testing.B, open BenchOpener) {
	benches := []struct {
		name string
		fn   func(*testing.B, relay.Store)
	}{
		{"Append/history=0", benchAppendFresh},
		{"Append/history=10000", func(b *testing.B, st relay.Store) { benchAppendHistory(b, st, 10_000, false) }},
		{"Append/history=10000-compacted", func(b *testing.B, st relay.Store) { benchAppendHistory(b, st, 10_000, true) }},
		{"Append/records=10000", func(b *testing.B, st relay.Store) { benchAppendSpread(b, st, 10_000) }},
		{"AppendBatch/entries=100/records=100", func(b *testing.B, st relay.Store) { benchAppendBatch(b, st, 100, false) }},
		{"AppendBatch/entries=100/records=1", func(b *testing.B, st relay.Store) { benchAppendBatch(b, st, 100, true) }},
		{"Log/limit=100", func(b *testing.B, st relay.Store) { benchLog(b, st, 10_000, 100) }},
		{"Log/newest", func(b *testing.B, st relay.Store) { benchLog(b, st, 10_000, 0) }},
		{"Record/tail=0", func(b *testing.B, st relay.Store) { benchRecord(b, st, 0) }},
		{"Record/tail=16", func(b *testing.B, st relay.Store) { benchRecord(b, st, 16) }},
		{"Record/tail=256", func(b *testing.B, st relay.Store) { benchRecord(b, st, relay.CompactTailEntries) }},
		{"Record/tail=16/history=10000", func(b *testing.B, st relay.Store) { benchRecordHistory(b, st, 10_000, 16) }},
		{"Records/limit=100", func(b *testing.B, st relay.Store) { benchRecords(b, st, 1_000, 100) }},
		{"CompactionCandidates/records=1000", func(b *testing.B, st relay.Store) { benchCandidates(b, st, 1_000, 0) }},
		{"CompactionCandidates/history=10000", func(b *testing.B, st relay.Store) { benchCandidates(b, st, 1_000, 10_000) }},
		{"Compact/tail=256", func(b *testing.B, st relay.Store) { benchCompact(b, st, relay.CompactTailEntries, 0) }},
		{"Compact/tail=4096", func(b *testing.B, st relay.Store) { benchCompact(b, st, 4096, 0) }},
		{"Compact/tail=256/history=10000", func(b *testing.B, st relay.Store) {
			benchCompact(b, st, relay.CompactTailEntries, 10_000)
		}},
		{"Truncate/entries=1000", func(b *testing.B, st relay.Store) { benchTruncate(b, st, 1_000, 4) }},
	}
	for _, bc := range benches {
		b.Run(bc.name, func(b *testing.B) {
			st := open(b, b.TempDir())
			if st == nil {
				b.Fatal("open returned a nil store")
			}
			b.Cleanup(func() { st.Close() })
			b.ReportAllocs()
			bc.fn(b, st)
		})
	}
}

// BenchChangeSize is the size of each change the benchmarks append.
const BenchChangeSize = 128

var (
	benchColl    = relay.Coll{Tenant: "bench", Collection: "records"}
	benchChange  = make([]byte, BenchChangeSize)
	benchSnap16K = make([]byte, 16<<10)
	benchSnap1K  = make([]byte, 1<<10)
)

// benchHeads is a record's heads at version v (1, 2, ...): made without
// hashing, so it costs the timed loop nothing; nil for v = 0, a record
// the store does not hold. Heads only need to differ per record.
func benchHeads(record string, v uint64) crdt.Heads {
	if v == 0 {
		return nil
	}
	var h crdt.Hash
	copy(h[:24], record)
	binary.BigEndian.PutUint64(h[24:], v)
	return crdt.Heads{h}
}

// benchEntry moves record from version v-1 to v.
func benchEntry(record string, v uint64) relay.Entry {
	h := benchHeads(record, v)
	return relay.Entry{Record: record, Base: benchHeads(record, v-1), Changes: benchChange, Hashes: []crdt.Hash{h[0]}, Heads: h}
}

func benchName(i int) string { return fmt.Sprintf("r%09d", i) }

var benchNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func benchAppend(b *testing.B, st relay.Store, es []relay.Entry) uint64 {
	head, err := st.Append(context.Background(), benchColl, 0, benchNow, es)
	if err != nil {
		b.Fatalf("Append of %d entries: %v", len(es), err)
	}
	return head
}

// fillBatch bounds the entries of one Append while a benchmark fills a
// store, far under what a store commits in one transaction.
const fillBatch = 250

// appendAll appends es in batches of fillBatch.
func appendAll(b *testing.B, st relay.Store, es []relay.Entry) {
	for len(es) > 0 {
		n := min(len(es), fillBatch)
		benchAppend(b, st, es[:n])
		es = es[n:]
	}
}

// grow appends n versions to record, which is at version v, and returns
// its new version.
func grow(b *testing.B, st relay.Store, record string, v uint64, n int) uint64 {
	es := make([]relay.Entry, 0, n)
	for range n {
		v++
		es = append(es, benchEntry(record, v))
	}
	appendAll(b, st, es)
	return v
}

// fillRecords creates records 0 to n-1, each at version 1.
func fillRecords(b *testing.B, st relay.Store, n int) {
	es := make([]relay.Entry, 0, n)
	for i := range n {
		es = append(es, benchEntry(benchName(i), 1))
	}
	appendAll(b, st, es)
}

// growAll appends n entries round-robin over the records named 0 to
// len(vs)-1, whose versions vs holds and are updated.
func growAll(b *testing.B, st relay.Store, vs []uint64, n int) {
	es := make([]relay.Entry, 0, n)
	for i := range n {
		k := i % len(vs)
		vs[k]++
		es = append(es, benchEntry(benchName(k), vs[k]))
	}
	appendAll(b, st, es)
}

func benchAppendFresh(b *testing.B, st relay.Store) {
	b.SetBytes(BenchChangeSize)
	es := make([]relay.Entry, 1)
	i := 0
	for b.Loop() {
		es[0] = benchEntry(benchName(i), 1)
		benchAppend(b, st, es)
		i++
	}
}

// benchAppendHistory appends to one record that already has history
// entries: in its tail, or (compacted) appended one at a time and folded
// into its snapshot in steps.
func benchAppendHistory(b *testing.B, st relay.Store, history int, compacted bool) {
	const rec = "hot"
	var v uint64
	if compacted {
		v = compactEvery(b, st, rec, 0, history, benchSnap16K)
	} else {
		v = grow(b, st, rec, 0, history)
	}
	b.SetBytes(BenchChangeSize)
	es := make([]relay.Entry, 1)
	for b.Loop() {
		v++
		es[0] = benchEntry(rec, v)
		benchAppend(b, st, es)
	}
	r, err := st.Record(context.Background(), benchColl, rec)
	if err != nil || !r.Heads.Equal(benchHeads(rec, v)) {
		b.Fatalf("after the appends the record is at %v (%v), want version %d", r.Heads, err, v)
	}
}

func benchAppendSpread(b *testing.B, st relay.Store, records int) {
	fillRecords(b, st, records)
	names := make([]string, records)
	vs := make([]uint64, records)
	for i := range names {
		names[i], vs[i] = benchName(i), 1
	}
	b.SetBytes(BenchChangeSize)
	es := make([]relay.Entry, 1)
	i := 0
	for b.Loop() {
		k := i % records
		vs[k]++
		es[0] = benchEntry(names[k], vs[k])
		benchAppend(b, st, es)
		i++
	}
}

// benchAppendBatch appends n entries per call: to n new records, or n
// successive versions of one record.
func benchAppendBatch(b *testing.B, st relay.Store, n int, oneRecord bool) {
	b.SetBytes(int64(n) * BenchChangeSize)
	es := make([]relay.Entry, n)
	next := 0
	var v uint64
	for b.Loop() {
		for k := range es {
			if oneRecord {
				v++
				es[k] = benchEntry("batched", v)
			} else {
				es[k] = benchEntry(benchName(next), 1)
				next++
			}
		}
		benchAppend(b, st, es)
	}
}

// benchLog reads a log of n entries (over 100 records): pages of limit
// entries in turn, or (limit 0) its newest entry.
func benchLog(b *testing.B, st relay.Store, n, limit int) {
	growAll(b, st, make([]uint64, 100), n)
	want, after := limit, uint64(0)
	if limit == 0 {
		want, after = 1, uint64(n-1)
	}
	b.SetBytes(int64(want) * BenchChangeSize)
	for b.Loop() {
		l, err := st.Log(context.Background(), benchColl, after, 100)
		if err != nil || len(l) != want || l[0].Seq != after+1 {
			b.Fatalf("Log(%d, 100) = %d entries, %v; want %d from %d", after, len(l), err, want, after+1)
		}
		if limit > 0 {
			after = (after + uint64(limit)) % uint64(n)
		}
	}
}

// benchRecord reads a record of a 16 KiB snapshot and tail entries.
func benchRecord(b *testing.B, st relay.Store, tail int) {
	const rec = "read"
	v := grow(b, st, rec, 0, 64)
	if err := st.Compact(context.Background(), benchColl, rec, benchSnap16K, v); err != nil {
		b.Fatal(err)
	}
	grow(b, st, rec, v, tail)
	b.SetBytes(int64(len(benchSnap16K) + tail*BenchChangeSize))
	for b.Loop() {
		r, err := st.Record(context.Background(), benchColl, rec)
		if err != nil || r.TailEntries != tail || len(r.Snapshot) != len(benchSnap16K) {
			b.Fatalf("Record = %d snapshot bytes, %d tail entries, %v; want %d, %d", len(r.Snapshot), r.TailEntries, err, len(benchSnap16K), tail)
		}
	}
}

// compactEvery grows record by n entries from version v, one Append each
// as the relay stores a live record's pushes, and folds its tail into
// snap every CompactTailEntries entries, as the relay's compactor does. It
// returns the record's new version.
func compactEvery(b *testing.B, st relay.Store, record string, v uint64, n int, snap []byte) uint64 {
	es := make([]relay.Entry, 1)
	for i := range n {
		v++
		es[0] = benchEntry(record, v)
		seq := benchAppend(b, st, es)
		if (i+1)%relay.CompactTailEntries == 0 || i == n-1 {
			if err := st.Compact(context.Background(), benchColl, record, snap, seq); err != nil {
				b.Fatal(err)
			}
		}
	}
	return v
}

// benchRecordHistory reads a record whose history entries were compacted
// in steps, then tail more were appended.
func benchRecordHistory(b *testing.B, st relay.Store, history, tail int) {
	const rec = "read"
	v := compactEvery(b, st, rec, 0, history, benchSnap16K)
	grow(b, st, rec, v, tail)
	b.SetBytes(int64(len(benchSnap16K) + tail*BenchChangeSize))
	for b.Loop() {
		r, err := st.Record(context.Background(), benchColl, rec)
		if err != nil || r.TailEntries != tail || len(r.Snapshot) != len(benchSnap16K) {
			b.Fatalf("Record = %d snapshot bytes, %d tail entries, %v; want %d, %d", len(r.Snapshot), r.TailEntries, err, len(benchSnap16K), tail)
		}
	}
}

// benchCandidates scans for compaction candidates in a store of records
// records, every tenth a candidate (a tail over CompactTailEntries),
// after history entries of one more record appended and folded in steps.
func benchCandidates(b *testing.B, st relay.Store, records, history int) {
	fillRecords(b, st, records)
	for i := 0; i < records; i += 10 {
		grow(b, st, benchName(i), 1, relay.CompactTailEntries)
	}
	compactEvery(b, st, "hot", 0, history, benchSnap1K)
	want := min(records/10, 64)
	b.SetBytes(0)
	for b.Loop() {
		cs, err := st.CompactionCandidates(context.Background(), 64)
		if err != nil || len(cs) != want {
			b.Fatalf("CompactionCandidates(64) = %d, %v; want %d", len(cs), err, want)
		}
	}
}

// benchRecords pages through n records, limit at a time; each has a 1 KiB
// snapshot and two tail entries.
func benchRecords(b *testing.B, st relay.Store, n, limit int) {
	fillRecords(b, st, n)
	for i := range n {
		if err := st.Compact(context.Background(), benchColl, benchName(i), benchSnap1K, uint64(i+1)); err != nil {
			b.Fatal(err)
		}
	}
	vs := make([]uint64, n)
	for i := range vs {
		vs[i] = 1
	}
	growAll(b, st, vs, 2*n)
	b.SetBytes(int64(limit * (len(benchSnap1K) + 2*BenchChangeSize)))
	after := ""
	for b.Loop() {
		rs, err := st.Records(context.Background(), benchColl, after, limit)
		if err != nil || len(rs) != limit || rs[0].TailEntries != 2 {
			b.Fatalf("Records(%q, %d) = %d records, %v", after, limit, len(rs), err)
		}
		after = rs[len(rs)-1].ID
		if after == benchName(n-1) {
			after = ""
		}
	}
}

// opMeter measures one operation per iteration of a benchmark whose
// iterations need setup far costlier than the operation (the appends that
// make a tail to compact, or a log to truncate). Stopping the timer for
// the setup would make b.Loop repeat it until the operation alone added
// up to the bench time: minutes, and gigabytes for a store in memory.
// Instead the loop's whole time paces b.Loop, and report replaces ns/op,
// MB/s, B/op and allocs/op with the operation's own figures.
type opMeter struct {
	n              int
	d              time.Duration
	allocs, bytes  uint64
	t0             time.Time
	allocs0, byte0 uint64
	ms             runtime.MemStats
}

func (m *opMeter) start() {
	runtime.ReadMemStats(&m.ms)
	m.allocs0, m.byte0 = m.ms.Mallocs, m.ms.TotalAlloc
	m.t0 = time.Now()
}

func (m *opMeter) stop() {
	m.d += time.Since(m.t0)
	runtime.ReadMemStats(&m.ms)
	m.allocs += m.ms.Mallocs - m.allocs0
	m.bytes += m.ms.TotalAlloc - m.byte0
	m.n++
}

// report sets the benchmark's figures to the operation's, each moving
// bytes.
func (m *opMeter) report(b *testing.B, bytes int64) {
	if m.n == 0 || m.d <= 0 {
		return
	}
	n := float64(m.n)
	b.ReportMetric(float64(m.d.Nanoseconds())/n, "ns/op")
	b.ReportMetric(float64(bytes)*n/1e6/m.d.Seconds(), "MB/s")
	b.ReportMetric(float64(m.bytes)/n, "B/op")
	b.ReportMetric(float64(m.allocs)/n, "allocs/op")
}

// benchCompact folds a tail of n entries per iteration (see opMeter): of
// a new record each time, or (history > 0) of one record that had history
// entries, appended one per call and folded in steps, before the timing
// began.
func benchCompact(b *testing.B, st relay.Store, n, history int) {
	rec := "compacted"
	var v uint64
	if history > 0 {
		v = compactEvery(b, st, rec, 0, history, benchSnap16K)
	}
	var m opMeter
	i := 0
	for b.Loop() {
		if history == 0 {
			rec, v = benchName(i), 0
			i++
		}
		v = grow(b, st, rec, v, n)
		r, err := st.Record(context.Background(), benchColl, rec)
		if err != nil || r.TailEntries != n {
			b.Fatalf("before Compact: %d tail entries, %v; want %d", r.TailEntries, err, n)
		}
		m.start()
		err = st.Compact(context.Background(), benchColl, rec, benchSnap16K, r.Seq)
		m.stop()
		if err != nil {
			b.Fatal(err)
		}
		// Keep a store in memory from holding every entry ever made.
		if _, err := st.Truncate(context.Background(), benchColl, r.Seq); err != nil {
			b.Fatal(err)
		}
	}
	m.report(b, int64(n)*BenchChangeSize)
}

// benchTruncate drops n log entries of records compacted past them per
// iteration (see opMeter).
func benchTruncate(b *testing.B, st relay.Store, n, records int) {
	vs := make([]uint64, records)
	var m opMeter
	for b.Loop() {
		growAll(b, st, vs, n)
		for k := range records {
			r, err := st.Record(context.Background(), benchColl, benchName(k))
			if err != nil {
				b.Fatal(err)
			}
			if err := st.Compact(context.Background(), benchColl, benchName(k), benchSnap1K, r.Seq); err != nil {
				b.Fatal(err)
			}
		}
		head, err := st.Head(context.Background(), benchColl)
		if err != nil {
			b.Fatal(err)
		}
		m.start()
		horizon, err := st.Truncate(context.Background(), benchColl, head)
		m.stop()
		if err != nil || horizon != head {
			b.Fatalf("Truncate(%d) = %d, %v; want every entry dropped", head, horizon, err)
		}
	}
	m.report(b, int64(n)*BenchChangeSize)
}
