package replica

import (
	"errors"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// loadDoc checks what it reads against the record's meta. Each case
// tampers with one stored key, as damage to the store would, and loading
// the record's document (an export, an edit) must give ErrCorrupt naming
// it, while reads, which go to its intact read model, and an untouched
// record read normally.
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
			_, _, err = c.Export("a")
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "items/a") {
				t.Fatalf("Export(a) = %v; want ErrCorrupt naming items/a", err)
			}
			if err := c.Update("a", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, 9) }); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Update(a) = %v; want ErrCorrupt", err)
			}
			// Reads go to the read model, which is intact: they give the
			// record as last written, never an empty or older one.
			var v map[string]any
			if err := c.Get("a", &v); err != nil || v["n"] != int64(5) {
				t.Fatalf("Get(a) = %v, %v; want n=5 from its read model", v, err)
			}
			if err := c.Get("b", &v); err != nil || v["n"] != int64(1) {
				t.Fatalf("Get(b) = %v, %v", v, err)
			}
		})
	}
}
