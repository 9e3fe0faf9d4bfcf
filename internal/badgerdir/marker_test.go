package badgerdir

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

var (
	errNotStore = errors.New("not a test store")
	errNewer    = errors.New("newer test store")
)

func testMarker() *Marker {
	n := 0
	return &Marker{
		Kind: "test", FormatKey: []byte("m/format"), IDKey: []byte("m/id"), Format: 3,
		NewID:    func() string { n++; return fmt.Sprint("id-", n) },
		NotStore: errNotStore, Newer: errNewer,
	}
}

func memDB(t *testing.T, keys map[string][]byte) *badger.DB {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions("").WithInMemory(true).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	err = db.Update(func(txn *badger.Txn) error {
		for k, v := range keys {
			if err := txn.Set([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func dump(t *testing.T, db *badger.DB) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			out[string(it.Item().Key())] = string(v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestMarkerInitNewAndExisting(t *testing.T) {
	m := testMarker()
	db := memDB(t, nil)
	id, format, err := m.Init(db)
	if err != nil || id != "id-1" || format != 3 {
		t.Fatalf("Init(new) = %q, %d, %v; want id-1, 3", id, format, err)
	}
	// Opened again: the same identity, no new one.
	id, format, err = m.Init(db)
	if err != nil || id != "id-1" || format != 3 {
		t.Fatalf("Init(again) = %q, %d, %v; want id-1, 3", id, format, err)
	}
	// An older format is reported, for the store to migrate.
	old := memDB(t, map[string][]byte{"m/format": binary.BigEndian.AppendUint32(nil, 1), "m/id": []byte("old"), "data": []byte("x")})
	id, format, err = m.Init(old)
	if err != nil || id != "old" || format != 1 {
		t.Fatalf("Init(format 1) = %q, %d, %v; want old, 1", id, format, err)
	}
	err = old.View(func(txn *badger.Txn) error {
		id, format, found, err := m.Read(txn)
		if err != nil || !found || id != "old" || format != 1 {
			t.Errorf("Read = %q, %d, %v, %v; want old, 1, true", id, format, found, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Anything that is not this kind of store is refused, and left as it was.
func TestMarkerRefusals(t *testing.T) {
	for name, tc := range map[string]struct {
		keys map[string][]byte
		want error
	}{
		"foreign keys":     {map[string][]byte{"x/1": []byte("someone else's")}, errNotStore},
		"short marker":     {map[string][]byte{"m/format": {0, 1}, "m/id": []byte("a")}, errNotStore},
		"no identity":      {map[string][]byte{"m/format": binary.BigEndian.AppendUint32(nil, 3)}, errNotStore},
		"newer format":     {map[string][]byte{"m/format": binary.BigEndian.AppendUint32(nil, 4), "m/id": []byte("a")}, errNewer},
		"identity, no fmt": {map[string][]byte{"m/id": []byte("a")}, errNotStore},
	} {
		t.Run(name, func(t *testing.T) {
			db := memDB(t, tc.keys)
			before := dump(t, db)
			if _, _, err := testMarker().Init(db); !errors.Is(err, tc.want) {
				t.Fatalf("Init = %v, want %v", err, tc.want)
			}
			if after := dump(t, db); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("Init changed the database: %v, was %v", after, before)
			}
			err := db.View(func(txn *badger.Txn) error {
				_, _, found, err := testMarker().Read(txn)
				if tc.want == errNewer && !errors.Is(err, errNewer) {
					t.Errorf("Read = %v, want %v", err, errNewer)
				}
				if found {
					t.Errorf("Read found a marker")
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestEmpty(t *testing.T) {
	for _, tc := range []struct {
		keys map[string][]byte
		want bool
	}{{nil, true}, {map[string][]byte{"k": nil}, false}} {
		err := memDB(t, tc.keys).View(func(txn *badger.Txn) error {
			if got := Empty(txn); got != tc.want {
				t.Errorf("Empty(%v) = %v, want %v", tc.keys, got, tc.want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
