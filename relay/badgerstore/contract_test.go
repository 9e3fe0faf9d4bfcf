package badgerstore_test

import (
	"testing"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/storetest"
)

func TestBadgerStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T, dir string) relay.Store {
		s, err := badgerstore.Open(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestBadgerStoreInMemory(t *testing.T) {
	storetest.RunVolatile(t, func(t *testing.T, dir string) relay.Store {
		s, err := badgerstore.Open("", &badgerstore.Options{InMemory: true})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
