package badgerstore_test

import (
	"testing"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/storetest"
)

// The store benchmarks (see storetest.Bench) over the Badger store:
//
//	go test -run='^$' -bench=. -benchtime=1s ./relay/badgerstore/

// BenchmarkBadgerStore is the store as `ferry relay` runs it: on disk,
// every Append fsynced.
func BenchmarkBadgerStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B, dir string) relay.Store { return openBenchBadger(b, dir, nil) })
}

// BenchmarkBadgerStoreRelaxed is the same without fsync: what the store
// costs apart from the disk's flush.
func BenchmarkBadgerStoreRelaxed(b *testing.B) {
	storetest.Bench(b, func(b *testing.B, dir string) relay.Store {
		return openBenchBadger(b, dir, &badgerstore.Options{Relaxed: true})
	})
}

func openBenchBadger(b *testing.B, dir string, o *badgerstore.Options) relay.Store {
	if o == nil {
		o = &badgerstore.Options{}
	}
	o.GCInterval = -1 // no value-log GC in the middle of a measurement
	s, err := badgerstore.Open(dir, o)
	if err != nil {
		b.Fatal(err)
	}
	return s
}
