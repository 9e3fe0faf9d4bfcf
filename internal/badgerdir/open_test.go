package badgerdir

import (
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

func quiet(dir string) badger.Options {
	return badger.DefaultOptions(dir).WithLogger(nil).WithBlockCacheSize(1 << 20)
}

func TestOpenLocked(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(quiet(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for name, open := range map[string]func() (*badger.DB, error){
		"read-write": func() (*badger.DB, error) { return Open(quiet(dir)) },
		"read-only":  func() (*badger.DB, error) { return OpenReadOnly(dir, quiet("")) },
	} {
		other, err := open()
		if err == nil {
			other.Close()
			t.Fatalf("%s: a second open of a held store succeeded", name)
		}
		if !errors.Is(err, ErrLocked) {
			t.Fatalf("%s: %v, want ErrLocked", name, err)
		}
		t.Logf("%s: %v", name, err)
	}
}

func TestOpenOtherErrorsAreNotLocked(t *testing.T) {
	dir := t.TempDir()
	// A MANIFEST Badger cannot read: the open fails, but not for a lock.
	write(t, dir, "MANIFEST", "not a manifest")
	if db, err := Open(quiet(dir)); err == nil {
		db.Close()
		t.Fatal("garbage MANIFEST opened")
	} else if errors.Is(err, ErrLocked) {
		t.Fatalf("reported as locked: %v", err)
	}
}

// snapshot is every file of dir with a hash of its contents and its
// modification time.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		info, _ := e.Info()
		sum := sha256.Sum256(b)
		out[e.Name()] = string(sum[:]) + info.ModTime().String()
	}
	return out
}

// storeWithK returns the folder of a closed store holding k = v.
func storeWithK(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	db, err := Open(quiet(dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("k"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// checkK checks that db holds k = v, as storeWithK left it.
func checkK(t *testing.T, db *badger.DB, what string) {
	t.Helper()
	err := db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte("k"))
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err == nil && string(v) != "v" {
			t.Errorf("%s: read %q, want v", what, v)
		}
		return err
	})
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func TestOpenReadOnlyChangesNothing(t *testing.T) {
	dir := storeWithK(t)
	before := snapshot(t, dir)

	ro, err := OpenReadOnly(dir, quiet(""))
	if err != nil {
		t.Fatal(err)
	}
	checkK(t, ro, "read-only")
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}
	unchanged(t, dir, before)
}

// unchanged checks that dir's files are as snapshot found them (before).
func unchanged(t *testing.T, dir string, before map[string]string) {
	t.Helper()
	after := snapshot(t, dir)
	if len(after) != len(before) {
		t.Fatalf("files changed: %d before, %d after", len(before), len(after))
	}
	for name, v := range before {
		if after[name] != v {
			t.Errorf("%s changed", name)
		}
	}
}

func TestOpenReadOnlyCreatesNothing(t *testing.T) {
	parent := t.TempDir()
	missing := filepath.Join(parent, "missing")
	if _, err := OpenReadOnly(missing, quiet("")); !errors.Is(err, ErrNoStore) {
		t.Fatalf("missing folder: %v, want ErrNoStore", err)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("missing folder created: %v", err)
	}
	empty := t.TempDir()
	if _, err := OpenReadOnly(empty, quiet("")); !errors.Is(err, ErrNoStore) {
		t.Fatalf("empty folder: %v, want ErrNoStore", err)
	}
	if n := names(t, empty); len(n) != 0 {
		t.Fatalf("empty folder now holds %v", n)
	}
}

// A store whose newest write-ahead log a crash cut inside its header is
// refused by a read-only open with ErrNeedsRepair, naming the log, and
// nothing changed: Badger's read-only open ends the process on such a log
// (its assertion that the log it would truncate is writable fails with
// log.Fatal). A read-write open repairs it, and reads the store whole;
// a read-only open then succeeds.
func TestOpenReadOnlyRefusesTornMemLog(t *testing.T) {
	dir := storeWithK(t)
	// The log of a memtable Badger had just begun when the crash came.
	if err := os.WriteFile(filepath.Join(dir, "00009.mem"), make([]byte, 10), 0o644); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	if _, err := OpenReadOnly(dir, quiet("")); !errors.Is(err, ErrNeedsRepair) || !strings.Contains(err.Error(), "00009.mem") {
		t.Fatalf("read-only open of a store with a torn log: %v, want ErrNeedsRepair naming it", err)
	}
	if _, err := Open(quiet(dir).WithReadOnly(true)); !errors.Is(err, ErrNeedsRepair) {
		t.Fatalf("Open read-only of a store with a torn log: %v, want ErrNeedsRepair", err)
	}
	unchanged(t, dir, before)
	rw, err := Open(quiet(dir))
	if err != nil {
		t.Fatalf("read-write open of a store with a torn log: %v", err)
	}
	rw.Close()
	ro, err := OpenReadOnly(dir, quiet(""))
	if err != nil {
		t.Fatalf("read-only open once repaired: %v", err)
	}
	checkK(t, ro, "once repaired")
	ro.Close()
}
