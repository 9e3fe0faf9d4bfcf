package storetest

import (
	"context"
	"testing"

	"github.com/ferrysync/ferry/relay"
)

// benchLog reads a log of n entries (over 100 records): pages of limit
// entries in turn, or (limit 0) its newest entry.
func benchLog(b *testing.B, st relay.Store, n, limit int) {
	growAll(b, st, make([]uint64, 100), n)
	want, after := limit, uint64(0)
	if limit == 0 {
		want, after = 1, uint64(n-1)
	}
	b.SetBytes(int64(want) * benchChangeSize)
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
	b.SetBytes(int64(len(benchSnap16K) + tail*benchChangeSize))
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
	b.SetBytes(int64(len(benchSnap16K) + tail*benchChangeSize))
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
	b.SetBytes(int64(limit * (len(benchSnap1K) + 2*benchChangeSize)))
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
