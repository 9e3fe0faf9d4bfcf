package replica

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2/z"
)

type lostRec struct {
	N    int64  `ferry:"n"`
	Name string `ferry:"name"`
	Cat  string `ferry:"cat"`
}

func lostWant(i int) lostRec {
	return lostRec{N: int64(i), Name: fmt.Sprintf("item %d", i), Cat: fmt.Sprintf("c%d", i%3)}
}

// A table damaged while the store is open reads as missing keys (Open
// turns Badger's block checksums on): damage to the block that holds the
// last records' read models hides those read models, not the records.
// Scan and Select list every record all the same, rebuilding the lost
// read models from the documents.
func TestScanListsRecordsWhoseReadModelIsLost(t *testing.T) {
	const n = 400
	dir := t.TempDir()
	r := open(t, dir, &Options{GCInterval: -1, LocalOnly: true})
	c := r.Collection("c")
	for i := range n {
		if err := c.Put(fmt.Sprintf("r%03d", i), lostWant(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Close(); err != nil { // its memtable becomes a table
		t.Fatal(err)
	}
	r = open(t, dir, &Options{GCInterval: -1, LocalOnly: true})
	c = r.Collection("c")

	// The store's keys end with the read models (no index, no profile):
	// the last block of the table holding them holds read models alone.
	sst := lastTable(t, dir)
	end := blocksEnd(t, sst)
	f, err := os.OpenFile(sst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 16), end-200); err != nil {
		t.Fatal(err)
	}
	f.Close()
	lost := 0
	if err := r.db.View(func(txn *badger.Txn) error {
		for i := range n {
			if _, ok, err := getKey(txn, recKey('v', "c", fmt.Sprintf("r%03d", i))); err != nil {
				return err
			} else if !ok {
				lost++
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if lost == 0 {
		t.Fatal("the damage lost no read model")
	}
	t.Logf("%d read models lost", lost)

	recs, err := collect(c.Scan(ScanOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != n {
		t.Fatalf("Scan listed %d records, want %d", len(recs), n)
	}
	for i, rec := range recs {
		var got lostRec
		if err := rec.Decode(&got); err != nil || rec.ID != fmt.Sprintf("r%03d", i) || got != lostWant(i) {
			t.Fatalf("Scan: %s = %+v (%v), want r%03d = %+v", rec.ID, got, err, i, lostWant(i))
		}
	}
	rows := 0
	for row, err := range Select(c, Query[lostRec]{Where: func(v *lostRec) bool { return v.Cat == "c1" }}) {
		if err != nil {
			t.Fatal(err)
		}
		if row.Value != lostWant(int(row.Value.N)) {
			t.Fatalf("Select: %s = %+v", row.ID, row.Value)
		}
		rows++
	}
	if want := n / 3; rows != want {
		t.Fatalf("Select kept %d rows, want %d", rows, want)
	}
	if err := checkViews(t, r, "c"); err != nil {
		t.Fatalf("after the scans: %v", err)
	}
}

// An index query reaches a record whose read model is lost through its
// index entry, and rebuilds the read model.
func TestIndexQueryRebuildsLostReadModel(t *testing.T) {
	r := open(t, t.TempDir(), &Options{GCInterval: -1, LocalOnly: true})
	c := r.Collection("c")
	if err := c.EnsureIndex("by_cat", IndexOptions{Fields: []string{"cat", "n"}}); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if err := c.Put(fmt.Sprintf("r%03d", i), lostWant(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Lose one read model and damage another, as a damaged table or value
	// would; their index entries stay.
	if err := r.db.Update(func(txn *badger.Txn) error {
		if err := txn.Delete(recKey('v', "c", "r004")); err != nil {
			return err
		}
		v, _, err := getKey(txn, recKey('v', "c", "r007"))
		if err != nil {
			return err
		}
		v[len(v)/2] ^= 0x40
		return txn.Set(recKey('v', "c", "r007"), v)
	}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for row, err := range Select(c, Query[lostRec]{Index: "by_cat", Eq: []any{"c1"}}) {
		if err != nil {
			t.Fatal(err)
		}
		if row.Value != lostWant(int(row.Value.N)) {
			t.Fatalf("Select: %s = %+v", row.ID, row.Value)
		}
		got = append(got, row.ID)
	}
	var want []string
	for i := 1; i < 30; i += 3 {
		want = append(want, fmt.Sprintf("r%03d", i))
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("the index query gave %v, want %v", got, want)
	}
	if err := checkViews(t, r, "c"); err != nil {
		t.Fatalf("after the query: %v", err)
	}
}

// lastTable returns the store's table whose keys come last.
func lastTable(t *testing.T, dir string) string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.sst"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no table in %s (%v)", dir, err)
	}
	var best string
	var biggest []byte
	for _, p := range paths {
		withTable(t, p, func(tb *table.Table) {
			if b := tb.Biggest(); best == "" || string(b) > string(biggest) {
				best, biggest = p, b
			}
		})
	}
	return best
}

// blocksEnd returns where a table's data blocks end: its index and
// checksums follow.
func blocksEnd(t *testing.T, path string) int64 {
	t.Helper()
	var end int64
	withTable(t, path, func(tb *table.Table) {
		// index, its length (4), its checksum, the checksum's length (4)
		end = tb.Size() - int64(tb.IndexSize()) - 4 - 4
	})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if end <= 0 || end > fi.Size() {
		t.Fatalf("%s: blocks end at %d of %d bytes", path, end, fi.Size())
	}
	return end
}

func withTable(t *testing.T, path string, fn func(*table.Table)) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	mf, err := z.OpenMmapFileUsing(f, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	defer mf.Close(-1)
	tb, err := table.OpenTable(mf, table.Options{ReadOnly: true, BlockSize: badger.DefaultOptions("").BlockSize,
		Compression: options.Snappy, ChkMode: options.NoVerification})
	if err != nil {
		t.Fatal(err)
	}
	fn(tb)
}
