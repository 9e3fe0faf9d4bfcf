package badgerdir

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

func TestDiskUsageCountsAllocatedBytes(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("allocation is known on Unix only")
	}
	dir := t.TempDir()
	// A file made 1 GiB long with 4 KiB written, as Badger makes its value
	// log: sparse on every file system Ferry runs on.
	f, err := os.Create(filepath.Join(dir, "000001.vlog"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, dir, "MANIFEST", "0123456789")
	n, err := DiskUsage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n < 4096 || n > 1<<20 {
		t.Fatalf("DiskUsage = %d, want the 4 KiB written (plus a block), not the 1 GiB length", n)
	}
}

func TestDiskUsageOfABadgerStore(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(quiet(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("k"), make([]byte, 10_000)) }); err != nil {
		t.Fatal(err)
	}
	var length int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		info, _ := e.Info()
		length += info.Size()
	}
	n, err := DiskUsage(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("open store: files %d bytes long, %d bytes on disk", length, n)
	if n < 10_000 || n > 4<<20 {
		t.Fatalf("DiskUsage = %d for one 10 kB value (file lengths %d)", n, length)
	}
}
