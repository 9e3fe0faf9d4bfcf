package replica

import (
	"errors"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// loadDoc checks what it reads against the record's meta. Each case
// tampers with one stored key, as damage to the store would, and the
// record must give ErrCorrupt naming it, while an untouched record reads
// normally.
func TestLoadDocChecksBookkeeping(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(txn *badger.Txn, m meta, other meta) error
	}{
		{"heads of another version", func(txn *badger.Txn, m, other meta) error {
			m.heads = other.heads
			return txn.Set(recKey('r', "items", "a"), m.encode())
		}},
		{"no bytes at all", func(txn *badger.Txn, m, _ meta) error {
			if err := txn.Delete(recKey('s', "items", "a")); err != nil {
				return err
			}
			for n := m.nextChunk - uint64(m.chunks); n < m.nextChunk; n++ {
				if err := txn.Delete(chunkKey("items", "a", n)); err != nil {
					return err
				}
			}
			return nil
		}},
		{"a chunk lost", func(txn *badger.Txn, m, _ meta) error {
			return txn.Delete(chunkKey("items", "a", m.nextChunk-1))
		}},
		{"a chunk emptied", func(txn *badger.Txn, m, _ meta) error {
			return txn.Set(chunkKey("items", "a", m.nextChunk-1), nil)
		}},
		{"snapshot emptied", func(txn *badger.Txn, m, _ meta) error {
			return txn.Set(recKey('s', "items", "a"), nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := open(t, "", &Options{InMemory: true, CompactAfter: 3})
			c := coll(t, r, "items")
			for _, id := range []string{"a", "b"} {
				if err := c.Put(id, map[string]any{"n": 1}); err != nil {
					t.Fatal(err)
				}
			}
			// Four edits: a snapshot, then chunks after it.
			for i := range 4 {
				if err := c.Update("a", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, i+2) }); err != nil {
					t.Fatal(err)
				}
			}
			err := r.db.Update(func(txn *badger.Txn) error {
				m, _, err := readMeta(txn, "items", "a")
				if err != nil {
					return err
				}
				if m.snapBytes == 0 || m.chunks == 0 {
					t.Fatalf("record a has a %d-byte snapshot and %d chunks; the test needs both", m.snapBytes, m.chunks)
				}
				other, _, err := readMeta(txn, "items", "b")
				if err != nil {
					return err
				}
				return tc.tamper(txn, m, other)
			})
			if err != nil {
				t.Fatal(err)
			}
			r.cache.drop(cacheKey("items", "a"))
			var v map[string]any
			err = c.Get("a", &v)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "items/a") {
				t.Fatalf("Get(a) = %v, %v; want ErrCorrupt naming items/a", v, err)
			}
			if _, err := collect(c.Scan(ScanOptions{})); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Scan = %v, want ErrCorrupt", err)
			}
			if err := c.Get("b", &v); err != nil || v["n"] != int64(1) {
				t.Fatalf("Get(b) = %v, %v", v, err)
			}
		})
	}
}
