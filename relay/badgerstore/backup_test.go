package badgerstore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/relay"
)

func TestBackupBadgerDir(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	bsAppend(t, s, 0, time.Now(), bsEntry("a", nil, "1"))
	inc := s.Incarnation()

	// While the store is open, the backup is refused, not taken beside it.
	if _, err := BackupDir(dir, &bytes.Buffer{}); !errors.Is(err, badgerdir.ErrLocked) {
		t.Fatalf("backup of an open store: %v, want ErrLocked", err)
	}
	s.Close()

	before := dirState(t, dir)
	var b bytes.Buffer
	got, err := BackupDir(dir, &b)
	if err != nil {
		t.Fatal(err)
	}
	if got != inc {
		t.Fatalf("incarnation %q, want %q", got, inc)
	}
	checkUntouched(t, dir, before)

	restored := filepath.Join(t.TempDir(), "r")
	if err := Restore(restored, &b); err != nil {
		t.Fatal(err)
	}
	r := bsOpen(t, restored, nil)
	if _, _, err := relay.Document(t.Context(), r, bsColl, "a"); err != nil {
		t.Fatalf("restored store lacks the record: %v", err)
	}
}

func TestBackupBadgerDirRefusesWhatIsNotARelayStore(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	if _, err := BackupDir(missing, &bytes.Buffer{}); !errors.Is(err, relay.ErrNotRelayStore) {
		t.Fatalf("missing folder: %v", err)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatal("backup created the missing folder")
	}

	// Another Badger database, such as a device's store.
	other := t.TempDir()
	db, err := badger.Open(badger.DefaultOptions(other).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("m/format"), []byte{0, 0, 0, 1}) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	before := dirState(t, other)
	if _, err := BackupDir(other, &bytes.Buffer{}); !errors.Is(err, relay.ErrNotRelayStore) {
		t.Fatalf("device store: %v", err)
	}
	checkUntouched(t, other, before)
}
