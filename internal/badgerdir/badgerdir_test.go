package badgerdir

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

func write(t *testing.T, dir, name string, data string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// state is each file's size and hash, to prove a refusal changed nothing.
func state(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, n := range names(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		out[n] = fmt.Sprintf("%d bytes %x", len(b), sha256.Sum256(b))
	}
	return out
}

func checkUntouched(t *testing.T, dir string, before map[string]string) {
	t.Helper()
	if after := state(t, dir); !maps.Equal(before, after) {
		t.Fatalf("the folder changed:\nbefore %v\nafter  %v", before, after)
	}
}

// copyDir replaces every file of to with from's.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	for _, n := range names(t, to) {
		if err := os.Remove(filepath.Join(to, n)); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names(t, from) {
		b, err := os.ReadFile(filepath.Join(from, n))
		if err != nil {
			t.Fatal(err)
		}
		write(t, to, n, string(b))
	}
}

// store writes n keys into a Badger store in a new folder and closes it,
// so its data is in a table.
func store(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	db, err := Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		err := db.Update(func(txn *badger.Txn) error {
			return txn.Set(fmt.Appendf(nil, "key%05d", i), bytes.Repeat([]byte{byte(i)}, 100))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := Close(db); err != nil {
		t.Fatal(err)
	}
	return dir
}

// keys opens dir as Prepare and Badger would and counts its keys.
func keys(t *testing.T, dir string) int {
	t.Helper()
	if _, err := Prepare(dir); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	db, err := Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer Close(db)
	n := 0
	err = db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func sstOf(t *testing.T, dir string) string {
	t.Helper()
	for _, n := range names(t, dir) {
		if strings.HasSuffix(n, ".sst") {
			return filepath.Join(dir, n)
		}
	}
	t.Fatalf("no table in %v", names(t, dir))
	return ""
}

func TestPrepare(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "a", "b")
	if ok, err := Prepare(missing); err != nil || ok {
		t.Fatalf("missing dir: %v %v", ok, err)
	}
	if _, err := os.Stat(missing); err != nil {
		t.Fatal("dir not created")
	}
	if ok, err := Prepare(missing); err != nil || ok {
		t.Fatalf("empty dir: %v %v", ok, err)
	}

	foreign := t.TempDir()
	write(t, foreign, "LOCK", "")
	write(t, foreign, "thesis.txt", "mine")
	if _, err := Prepare(foreign); !errors.Is(err, ErrForeign) {
		t.Fatalf("foreign: %v", err)
	}
	if len(names(t, foreign)) != 2 {
		t.Fatal("foreign folder touched")
	}

	// A real store, with the empty files a crash can leave beside its data.
	s := store(t, 100)
	write(t, s, "00007.mem", "")
	write(t, s, "000002.vlog", "")
	ok, err := Prepare(s)
	if err != nil || !ok {
		t.Fatalf("store: %v %v", ok, err)
	}
	if got := names(t, s); slices.Contains(got, "00007.mem") || slices.Contains(got, "000002.vlog") {
		t.Fatalf("empty files left: %v", got)
	}
	if n := keys(t, s); n != 100 {
		t.Fatalf("store holds %d keys, want 100", n)
	}
}

// Badger writes LOCK and MANIFEST-REWRITE, then renames the latter to
// MANIFEST, before anything else. Killed in between, the folder holds no
// data: it is cleared and opens as a new store.
func TestPrepareAbortedFirstOpen(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "LOCK", "4242\n")
	write(t, dir, "MANIFEST-REWRITE", "partial")
	ok, err := Prepare(dir)
	if err != nil || ok || len(names(t, dir)) != 0 {
		t.Fatalf("aborted first open: %v %v %v", ok, err, names(t, dir))
	}
	if n := keys(t, dir); n != 0 {
		t.Fatalf("%d keys in a new store", n)
	}
}

// A store that lost its MANIFEST still holds its data: Prepare must refuse
// it, and leave every file as it was, rather than clear it (Badger alone
// would create an empty MANIFEST and delete every table).
func TestPrepareRefusesLostManifest(t *testing.T) {
	dir := store(t, 100)
	if err := os.Remove(filepath.Join(dir, "MANIFEST")); err != nil {
		t.Fatal(err)
	}
	before := state(t, dir)
	_, err := Prepare(dir)
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "MANIFEST") || !strings.Contains(err.Error(), ".sst") {
		t.Fatalf("Prepare = %v, want ErrDamaged naming the missing MANIFEST and a table", err)
	}
	checkUntouched(t, dir, before)

	// Even a folder whose only remaining file is Badger's key registry
	// once had a MANIFEST: refused too.
	kr := t.TempDir()
	write(t, kr, "LOCK", "")
	write(t, kr, "KEYREGISTRY", "registry")
	before = state(t, kr)
	if _, err := Prepare(kr); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Prepare(KEYREGISTRY, no MANIFEST) = %v, want ErrDamaged", err)
	}
	checkUntouched(t, kr, before)
}

// Each damage to a table, the MANIFEST or the key registry is refused
// before Badger opens the store (a cut table makes Badger panic on a
// goroutine nobody can recover), and the folder is left as it was. The
// error names the folder and, in Ferry's words (its Problem), the file
// damaged, and ends with the promise that nothing was changed.
func TestPrepareRefusesDamagedStores(t *testing.T) {
	const table = "<table>" // the damaged table, by its name
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, sst string)
		// files are those the error must name: table stands for the
		// damaged table's.
		files []string
	}{
		{"tail cut", func(t *testing.T, sst string) {
			fi, _ := os.Stat(sst)
			if err := os.Truncate(sst, fi.Size()*2/3); err != nil {
				t.Fatal(err)
			}
		}, []string{table}},
		{"64 bytes overwritten", func(t *testing.T, sst string) {
			b, err := os.ReadFile(sst)
			if err != nil {
				t.Fatal(err)
			}
			mid := len(b) / 2
			copy(b[mid:mid+64], bytes.Repeat([]byte{0xa5}, 64))
			if err := os.WriteFile(sst, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, []string{table}},
		{"emptied", func(t *testing.T, sst string) {
			if err := os.Truncate(sst, 0); err != nil {
				t.Fatal(err)
			}
		}, []string{table}},
		{"missing", func(t *testing.T, sst string) {
			if err := os.Remove(sst); err != nil {
				t.Fatal(err)
			}
		}, []string{table}},
		{"MANIFEST cut", func(t *testing.T, sst string) {
			if err := os.Truncate(filepath.Join(filepath.Dir(sst), "MANIFEST"), 5); err != nil {
				t.Fatal(err)
			}
		}, []string{"MANIFEST"}},
		{"MANIFEST's last 8 bytes cut", func(t *testing.T, sst string) {
			// Its last entry listed the table: Badger would delete it.
			m := filepath.Join(filepath.Dir(sst), "MANIFEST")
			fi, _ := os.Stat(m)
			if err := os.Truncate(m, fi.Size()-8); err != nil {
				t.Fatal(err)
			}
		}, []string{"MANIFEST", table}}, // and the table Badger would delete
		{"KEYREGISTRY cut", func(t *testing.T, sst string) {
			if err := os.Truncate(filepath.Join(filepath.Dir(sst), "KEYREGISTRY"), 7); err != nil {
				t.Fatal(err)
			}
		}, []string{"KEYREGISTRY"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := store(t, 2000)
			backup := t.TempDir()
			copyDir(t, dir, backup)
			sst := sstOf(t, dir)
			tc.damage(t, sst)
			before := state(t, dir)
			_, err := Prepare(dir)
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("Prepare = %v, want ErrDamaged", err)
			}
			t.Log(err)
			var de *DamagedError
			if !errors.As(err, &de) {
				t.Fatalf("Prepare = %v (%T), want a *DamagedError", err, err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, dir+": ") {
				t.Errorf("the error does not start with the folder %s: %q", dir, msg)
			}
			for _, f := range tc.files {
				if f == table {
					f = filepath.Base(sst)
				}
				if !strings.Contains(de.Problem, f) {
					t.Errorf("the error does not name %s in its problem %q: %q", f, de.Problem, msg)
				}
			}
			if !strings.HasSuffix(msg, "; nothing in the folder was changed") || !de.Untouched {
				t.Errorf("the error does not end with the promise that nothing in the folder was changed: %q", msg)
			}
			checkUntouched(t, dir, before)
			// Restored, the store opens in this same process: nothing
			// was left holding its lock.
			copyDir(t, backup, dir)
			if n := keys(t, dir); n != 2000 {
				t.Fatalf("restored store holds %d keys, want 2000", n)
			}
		})
	}
}

// A MANIFEST that ends in a partial entry is what a write cut short
// leaves. With no table it does not list, or only tables whose writes the
// listed ones hold too (what a compaction cut short leaves), Badger drops
// the entry (and those tables) and loses nothing, so the store opens.
func TestPreparePartialManifestEntry(t *testing.T) {
	for _, older := range []bool{false, true} {
		t.Run(fmt.Sprint("unlisted older table ", older), func(t *testing.T) {
			dir := store(t, 2000)
			if older {
				// A copy of a listed table under a new number holds no
				// write the listed tables lack.
				b, err := os.ReadFile(sstOf(t, dir))
				if err != nil {
					t.Fatal(err)
				}
				write(t, dir, "000099.sst", string(b))
			}
			f, err := os.OpenFile(filepath.Join(dir, "MANIFEST"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			// The length and checksum of an entry of 40 bytes, and 10 of them.
			if _, err := f.Write(append([]byte{0, 0, 0, 40, 1, 2, 3, 4}, make([]byte, 10)...)); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if n := keys(t, dir); n != 2000 {
				t.Fatalf("store holds %d keys, want 2000", n)
			}
		})
	}
}

// A folder another store has open is neither repaired nor judged.
func TestPrepareInUse(t *testing.T) {
	dir := store(t, 10)
	db, err := Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer Close(db)
	write(t, dir, "00099.mem", "")
	if _, err := Prepare(dir); err == nil || errors.Is(err, ErrDamaged) {
		t.Fatalf("Prepare(open store) = %v, want an error that is not ErrDamaged", err)
	}
	if !slices.Contains(names(t, dir), "00099.mem") {
		t.Fatal("Prepare removed a file of a store in use")
	}
}

// A panic inside badger.Open becomes ErrDamaged, and Badger's folder lock
// is released: the store opens again in the same process.
func TestOpenRecoversPanic(t *testing.T) {
	dir := store(t, 10)
	_, err := Open(badger.DefaultOptions(dir).WithLogger(panicLogger{}))
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("Open with a panicking logger = %v, want ErrDamaged", err)
	}
	if n := keys(t, dir); n != 10 {
		t.Fatalf("reopened store holds %d keys, want 10", n)
	}
}

// panicLogger panics on the message Badger logs on the opening goroutine
// once its tables are open.
type panicLogger struct{}

func (panicLogger) Errorf(string, ...any)   {}
func (panicLogger) Warningf(string, ...any) {}
func (panicLogger) Debugf(string, ...any)   {}
func (panicLogger) Infof(f string, _ ...any) {
	if strings.HasPrefix(f, "All %d tables opened") {
		panic("boom")
	}
}
