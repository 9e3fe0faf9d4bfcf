//go:build linux

package replica

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/internal/badgerdir"
)

// The periodic release after writes drops the store's table pages from
// the process's resident memory: after a scan read every table through
// Badger's mappings, a unit of nativeEvery writes leaves a fraction of
// them resident. The records read the same after.
func TestWritesReleaseTablePages(t *testing.T) {
	dir := t.TempDir()
	opts := &Options{LocalOnly: true, Relaxed: true, GCInterval: -1, memTableSize: 1 << 20}
	r, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	put := func(r *Replica, from, n int) {
		t.Helper()
		err := r.Write(func(tx *Tx) error {
			for i := from; i < from+n; i++ {
				if err := tx.Put("c", fmt.Sprintf("r%05d", i), map[string]any{"n": i, "s": strings.Repeat("x", i%300)}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	const n = 4000
	for i := 0; i < n; i += 200 {
		put(r, i, 200)
	}
	// Closed, the store's memtables are flushed to tables.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r = open(t, dir, opts)
	c := r.Collection("c")
	scan := func() {
		t.Helper()
		got := 0
		for e, err := range c.Scan(ScanOptions{}) {
			if err != nil {
				t.Fatal(err)
			}
			var v struct {
				N int `ferry:"n"`
			}
			if err := e.Decode(&v); err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("r%05d", v.N); e.ID != want {
				t.Fatalf("record %s holds n %d", e.ID, v.N)
			}
			got++
		}
		if got < n {
			t.Fatalf("scanned %d records, want at least %d", got, n)
		}
	}
	scan()
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	before := residentTables(t, real)
	if before == 0 {
		t.Fatal("no table pages resident after a scan: nothing to test")
	}
	for i := 0; i < nativeEvery; i += 100 {
		put(r, n+i, 100)
	}
	after := residentTables(t, real)
	t.Logf("tables resident: %d B after the scan, %d B after %d writes", before, after, nativeEvery)
	if after > before/2 {
		t.Fatalf("tables resident: %d B after the scan, %d B after %d writes; want them released", before, after, nativeEvery)
	}
	scan()
}

// residentTables is ResidentTables, skipping where the process's
// mappings cannot be read.
func residentTables(t *testing.T, dir string) int64 {
	t.Helper()
	n, err := badgerdir.ResidentTables(dir)
	if err != nil {
		t.Skip(err)
	}
	return n
}
