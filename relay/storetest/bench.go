package storetest

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// BenchOpener opens an empty store for a benchmark, keeping its data under
// dir (a fresh b.TempDir(); for a store kept elsewhere, a key naming the
// database or schema). Bench closes the store when the benchmark ends; the
// opener may also close it in b.Cleanup. It is called in the goroutine of
// the benchmark it is given, one call at a time.
type BenchOpener func(b *testing.B, dir string) relay.Store

// Bench measures a relay.Store's operations, the same way for every
// implementation, so their figures compare:
//
//	func BenchmarkBadgerStore(b *testing.B) {
//		storetest.Bench(b, func(b *testing.B, dir string) relay.Store {
//			s, err := badgerstore.Open(dir, nil)
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
// changes are 128 bytes each, a single-field update's size;
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
// allocs/op are the operation's alone, measured around it.
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

// benchChangeSize is the size of each change the benchmarks append.
const benchChangeSize = 128

var (
	benchColl    = relay.Coll{Tenant: "bench", Collection: "records"}
	benchChange  = make([]byte, benchChangeSize)
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
