//go:build linux

package badgerdir

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

func TestTableMappings(t *testing.T) {
	maps := []byte(`55d0c0a00000-55d0c0c00000 r--p 00000000 fd:01 1234 /usr/bin/app
7f0000000000-7f0000200000 rw-s 00000000 fd:01 55 /data/my store/000012.sst
7f0000200000-7f0000300000 r--s 00000000 fd:01 56 /data/my store/000013.sst
7f0000300000-7f0000400000 rw-s 00000000 fd:01 57 /data/my store/00001.mem
7f0000400000-7f0000500000 rw-s 00000000 fd:01 58 /data/other/000014.sst
7f0000500000-7f0000600000 rw-s 00000000 fd:01 59 /data/my store/000015.sst (deleted)
7f0000600000-7f0000700000 rw-p 00000000 00:00 0 
7f0000700000-7f0000800000 rw-s 00001000 fd:01 60 /data/my store/000016.sst
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
`)
	got := tableMappings(maps, "/data/my store")
	want := []mapping{
		{start: 0x7f0000000000, end: 0x7f0000200000, id: 12},
		{start: 0x7f0000200000, end: 0x7f0000300000, id: 13},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// TestReleaseTablePages: after a read through its tables, the store's
// table pages are resident in the process; Release drops their blocks and
// keeps their indexes, and the store reads the same values after.
func TestReleaseTablePages(t *testing.T) {
	dir := t.TempDir()
	opts := quiet(dir).WithMemTableSize(1 << 20).WithValueThreshold(1 << 10)
	db, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[string][]byte{}
	for i := range 4000 {
		v := make([]byte, 200)
		for j := range v {
			v[j] = byte(rng.IntN(16)) // compressible, not empty
		}
		k := fmt.Sprintf("key%06d", i)
		want[k] = v
		if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(k), v) }); err != nil {
			t.Fatal(err)
		}
	}
	// Closing flushes the memtables to tables; opened again, the store
	// reads them through their mappings.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if db, err = Open(opts); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if len(db.Tables()) == 0 {
		t.Fatal("no tables")
	}
	readAll := func() {
		t.Helper()
		got := dump(t, db)
		if len(got) != len(want) {
			t.Fatalf("read %d keys, want %d", len(got), len(want))
		}
		for k, v := range got {
			if v != string(want[k]) {
				t.Fatalf("key %q: wrong value", k)
			}
		}
	}
	readAll()
	p := NewTablePages(db, dir)
	before := residentTables(t, p.dir)
	if before == 0 {
		t.Fatal("no table pages resident after a read: nothing to test")
	}
	advised, err := p.Release()
	if err != nil {
		t.Fatal(err)
	}
	after := residentTables(t, p.dir)
	t.Logf("tables resident: %d B before, %d B after; %d B advised", before, after, advised)
	if advised == 0 || after > before/4 {
		t.Fatalf("tables resident: %d B before Release, %d B after", before, after)
	}
	if after == 0 {
		t.Fatal("the tables' indexes were released too")
	}
	readAll()

	// Stopped (as a store's owner does before closing it), Release
	// leaves the tables alone.
	p.Stop()
	if advised, err := p.Release(); advised != 0 || err != nil {
		t.Fatalf("Release after Stop advised %d B (%v)", advised, err)
	}
}

// residentTables is ResidentTables, skipping where the process's
// mappings cannot be read.
func residentTables(t *testing.T, dir string) int64 {
	t.Helper()
	n, err := ResidentTables(dir)
	if err != nil {
		t.Skip(err)
	}
	return n
}
