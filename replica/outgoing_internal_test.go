package replica

import (
	"errors"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// A record the relay never acknowledged and that has no snapshot pushes
// its stored chunks as they are, without loading its document: the same
// changes and heads the loaded document gives, and the record is not
// loaded into the cache by it.
func TestOutgoingReadsANewRecordsChunks(t *testing.T) {
	r := open(t, "", &Options{InMemory: true, CompactAfter: 8})
	c := coll(t, r, "items")
	if err := c.Put("a", map[string]any{"n": 1, "name": "first"}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := c.Update("a", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, i+2) }); err != nil {
			t.Fatal(err)
		}
	}
	key := cacheKey("items", "a")
	r.cache.drop(key)
	got, err := r.outgoing("items", "a")
	if err != nil {
		t.Fatal(err)
	}
	if r.cache.has(key) {
		t.Fatal("reading the record's push loaded its document")
	}
	// The heads the loaded document gives, for comparison.
	var heads crdt.Heads
	if err := c.read("a", func(d *crdt.Doc, m meta) error {
		heads = d.Heads()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !got.heads.Equal(heads) || got.base != nil || got.known {
		t.Fatalf("heads %v base %v known %v; want heads %v, no base, not known", got.heads, got.base, got.known, heads)
	}
	// Every change of the record: they load as its version.
	d, err := crdt.Load(got.changes, "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	if !d.Heads().Equal(heads) {
		t.Fatalf("the pushed chunks load as %v, want %v", d.Heads(), heads)
	}
}

// Records the shortcut does not cover, or whose bytes fail its checks,
// go the way of a loaded document, which reports damage as ErrCorrupt.
func TestOutgoingStoredFallsBack(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, r *Replica, c *Collection)
		corrupt bool
	}{
		{"acknowledged before", func(t *testing.T, r *Replica, c *Collection) {
			err := r.db.Update(func(txn *badger.Txn) error {
				m, _, err := readMeta(txn, "items", "a")
				if err != nil {
					return err
				}
				return txn.Set(recKey('a', "items", "a"), m.heads.Bytes())
			})
			if err != nil {
				t.Fatal(err)
			}
		}, false},
		{"a snapshot", func(t *testing.T, r *Replica, c *Collection) {
			for i := range 4 {
				if err := c.Update("a", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, i+2) }); err != nil {
					t.Fatal(err)
				}
			}
		}, false},
		{"a chunk damaged", func(t *testing.T, r *Replica, c *Collection) {
			err := r.db.Update(func(txn *badger.Txn) error {
				m, _, err := readMeta(txn, "items", "a")
				if err != nil {
					return err
				}
				k := chunkKey("items", "a", m.nextChunk-1)
				item, err := txn.Get(k)
				if err != nil {
					return err
				}
				v, err := item.ValueCopy(nil)
				if err != nil {
					return err
				}
				v[len(v)-1] ^= 0xff
				return txn.Set(k, v)
			})
			if err != nil {
				t.Fatal(err)
			}
		}, true},
		{"heads of another version", func(t *testing.T, r *Replica, c *Collection) {
			err := r.db.Update(func(txn *badger.Txn) error {
				m, _, err := readMeta(txn, "items", "a")
				if err != nil {
					return err
				}
				other, _, err := readMeta(txn, "items", "b")
				if err != nil {
					return err
				}
				m.heads = other.heads
				return txn.Set(recKey('r', "items", "a"), m.encode())
			})
			if err != nil {
				t.Fatal(err)
			}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := open(t, "", &Options{InMemory: true, CompactAfter: 3})
			c := coll(t, r, "items")
			for i, id := range []string{"a", "b"} {
				if err := c.Put(id, map[string]any{"n": i + 1}); err != nil {
					t.Fatal(err)
				}
			}
			tc.prepare(t, r, c)
			r.cache.drop(cacheKey("items", "a"))
			if _, ok, err := r.outgoingStored("items", "a"); ok || err != nil {
				t.Fatalf("outgoingStored: ok %v, err %v; want it to leave the record to a load", ok, err)
			}
			_, err := r.outgoing("items", "a")
			if tc.corrupt != errors.Is(err, ErrCorrupt) {
				t.Fatalf("outgoing: %v; want ErrCorrupt: %v", err, tc.corrupt)
			}
		})
	}
}
