package badgerdir

import (
	"bytes"
	"errors"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

func backupOf(t *testing.T, n int) []byte {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions("").WithInMemory(true).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for i := 0; i < n; i++ {
		if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte{byte(i), 'k'}, []byte("value")) }); err != nil {
			t.Fatal(err)
		}
	}
	var b bytes.Buffer
	if _, err := db.Backup(&b, 0); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestCheckBackup(t *testing.T) {
	good := backupOf(t, 3)
	if n, err := CheckBackup(bytes.NewReader(good), int64(len(good))); err != nil || n != 3 {
		t.Fatalf("good backup: %d entries, %v", n, err)
	}
	if n, err := CheckBackup(bytes.NewReader(nil), 0); err != nil || n != 0 {
		t.Fatalf("empty stream: %d, %v", n, err)
	}
	// The file that made Load panic (makeslice: len out of range): text,
	// whose first eight bytes read as an enormous length.
	text := []byte("this is not a backup, just some notes\n")
	for name, in := range map[string][]byte{
		"text":           text,
		"short length":   {1, 2, 3},
		"cut short":      good[:len(good)-1],
		"trailing bytes": append(append([]byte{}, good...), 0xff),
		"not protobuf":   append([]byte{4, 0, 0, 0, 0, 0, 0, 0}, 0xff, 0xff, 0xff, 0xff),
	} {
		if _, err := CheckBackup(bytes.NewReader(in), int64(len(in))); !errors.Is(err, ErrNotBackup) {
			t.Errorf("%s: %v, want ErrNotBackup", name, err)
		}
	}
}
