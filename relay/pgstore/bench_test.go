package pgstore_test

// The store's own costs, beside the relay's (ferry bench --postgres):
//
//	FERRY_TEST_POSTGRES=... go test -run='^$' -bench=. ./relay/pgstore/

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/pgtest"
	"github.com/ferrysync/ferry/relay"
)

// entryOf is a new record's entry of about the size of a W4 change.
func entryOf(id string) relay.Entry {
	e := newEntry(id, nil, "1")
	e.Changes = make([]byte, 180)
	copy(e.Changes, id)
	return e
}

// BenchmarkAppend measures appends of new records, n per Append, from one
// goroutine (each waits for its commit) and from eight at once, to one
// collection (they take turns on its row) and to eight.
func BenchmarkAppend(b *testing.B) {
	for _, tc := range []struct {
		name        string
		perAppend   int
		parallel    bool
		collections int
	}{
		{"1/serial", 1, false, 1},
		{"16/serial", 16, false, 1},
		{"1/parallel/one-collection", 1, true, 1},
		{"1/parallel/8-collections", 1, true, 8},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := open(b, pgtest.Schema(b), nil)
			var n atomic.Int64
			appendOne := func(ctx context.Context) {
				i := n.Add(1)
				c := relay.Coll{Tenant: "app", Collection: fmt.Sprint("c", i%int64(tc.collections))}
				es := make([]relay.Entry, tc.perAppend)
				for j := range es {
					es[j] = entryOf(fmt.Sprintf("r%d-%d", i, j))
				}
				if _, err := s.Append(ctx, c, 0, time.Now(), es); err != nil {
					b.Error(err)
				}
			}
			b.ResetTimer()
			if tc.parallel {
				b.SetParallelism(4) // 8 goroutines on 2 cores
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						appendOne(context.Background())
					}
				})
			} else {
				for b.Loop() {
					appendOne(context.Background())
				}
			}
			b.ReportMetric(float64(b.N*tc.perAppend)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}

// BenchmarkRead measures the reads of a push (a record, missing or held)
// and of a subscriber (the log after its cursor).
func BenchmarkRead(b *testing.B) {
	s := open(b, pgtest.Schema(b), nil)
	ctx := context.Background()
	for i := range 1000 {
		if _, err := s.Append(ctx, coll, 0, time.Now(), []relay.Entry{entryOf(fmt.Sprint("r", i))}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("Record/missing", func(b *testing.B) {
		for b.Loop() {
			s.Record(ctx, coll, "nobody")
		}
	})
	b.Run("Record/held", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Record(ctx, coll, "r500"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Log/last-entry", func(b *testing.B) {
		for b.Loop() {
			if l, err := s.Log(ctx, coll, 999, 100); err != nil || len(l) != 1 {
				b.Fatal(l, err)
			}
		}
	})
	b.Run("Head", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Head(ctx, coll); err != nil {
				b.Fatal(err)
			}
		}
	})
	_ = crdt.Heads{}
}
