package badgerdir

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func write(t *testing.T, dir, name string, data string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func names(t *testing.T, dir string) []string {
	es, _ := os.ReadDir(dir)
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

func TestPrepare(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "a", "b")
	if ok, err := Prepare(missing); err != nil || ok {
		t.Fatalf("missing dir: %v %v", ok, err)
	}
	if _, err := os.Stat(missing); err != nil {
		t.Fatal("dir not created")
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

	aborted := t.TempDir()
	write(t, aborted, "LOCK", "")
	write(t, aborted, "MANIFEST-REWRITE", "partial")
	if ok, err := Prepare(aborted); err != nil || ok || len(names(t, aborted)) != 0 {
		t.Fatalf("aborted first open: %v %v %v", ok, err, names(t, aborted))
	}

	store := t.TempDir()
	write(t, store, "MANIFEST", "m")
	write(t, store, "000001.vlog", "data")
	write(t, store, "00007.mem", "")
	write(t, store, "000002.vlog", "")
	ok, err := Prepare(store)
	if err != nil || !ok {
		t.Fatalf("store: %v %v", ok, err)
	}
	got := names(t, store)
	if len(got) != 2 || got[0] != "000001.vlog" || got[1] != "MANIFEST" {
		t.Fatalf("after repair: %v", got)
	}
}
