package storetest

import (
	"context"
	"testing"

	"github.com/ferrysync/ferry/relay"
)

func benchAppendFresh(b *testing.B, st relay.Store) {
	b.SetBytes(benchChangeSize)
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
	b.SetBytes(benchChangeSize)
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
	b.SetBytes(benchChangeSize)
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
	b.SetBytes(int64(n) * benchChangeSize)
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
