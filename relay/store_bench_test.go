package relay_test

import (
	"testing"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/storetest"
)

// The store benchmarks (see storetest.Bench) over each store of this
// package:
//
//	go test -run='^$' -bench=Store -benchtime=1s ./relay/

// BenchmarkBadgerStore is the store as `ferry relay` runs it: on disk,
// every Append fsynced.
func BenchmarkBadgerStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B, dir string) relay.Store { return openBenchBadger(b, dir, nil) })
}

// BenchmarkBadgerStoreRelaxed is the same without fsync: what the store
// costs apart from the disk's flush.
func BenchmarkBadgerStoreRelaxed(b *testing.B) {
	storetest.Bench(b, func(b *testing.B, dir string) relay.Store {
		return openBenchBadger(b, dir, &relay.BadgerOptions{Relaxed: true})
	})
}

func openBenchBadger(b *testing.B, dir string, o *relay.BadgerOptions) relay.Store {
	if o == nil {
		o = &relay.BadgerOptions{}
	}
	o.GCInterval = -1 // no value-log GC in the middle of a measurement
	s, err := relay.OpenBadgerStore(dir, o)
	if err != nil {
		b.Fatal(err)
	}
	return s
}
