package memstore_test

import (
	"testing"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
)

func TestMemStore(t *testing.T) {
	storetest.RunVolatile(t, func(t *testing.T, dir string) relay.Store {
		return memstore.New()
	})
}

// The store benchmarks (see storetest.Bench):
//
//	go test -run='^$' -bench=. ./relay/memstore/
func BenchmarkMemStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B, dir string) relay.Store { return memstore.New() })
}
