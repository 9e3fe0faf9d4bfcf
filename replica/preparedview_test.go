package replica

import (
	"bytes"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
)

// TestPulledReadModelsMatchDocuments has b pull more records than a batch
// merges at once (prepareMerges, which also packs their read models),
// with one core and with two: first a fresh pull of records of every
// shape (nested, deeply too, text and counters, deleted), then a
// pull of a's edits of them while b edited some too (merged without
// conflict, or with conflicts settled by prefer-local in the merge), and
// a's deletes and restores. After each pull every read model and index
// entry on b is its document's, and reads see a's and b's values; the
// fresh pull lists the collection.
func TestPulledReadModelsMatchDocuments(t *testing.T) {
	const n = 2*prepWindow + 5
	for _, procs := range []int{1, 2} {
		t.Run(fmt.Sprintf("procs=%d", procs), func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			e := newSyncEnv(t)
			a, b := e.device(nil), e.device(nil)
			setProfilePolicy(t, b, policy.PreferLocal)
			if err := b.Collection("c").EnsureIndex("by_cat", IndexOptions{Fields: []string{"cat"}}); err != nil {
				t.Fatal(err)
			}
			deep := any("leaf")
			for range 10 {
				deep = map[string]any{"k": []any{deep}}
			}
			id := func(i int) string { return fmt.Sprintf("r%03d", i) }
			err := a.Write(func(tx *Tx) error {
				for i := range n {
					f := map[string]any{"cat": fmt.Sprintf("c%d", i%3), "qty": int64(i), "price": 1.5}
					switch i % 5 {
					case 1:
						f["addr"] = map[string]any{"city": "Oslo", "geo": []any{1.5, int64(i)}}
					case 2:
						f["notes"], f["stock"] = crdt.Text("tea"), crdt.Counter(i)
					case 3:
						f["when"], f["blob"] = time.UnixMilli(int64(i)), []byte{byte(i)}
					}
					if i == 7 {
						f["deep"] = deep
					}
					if err := tx.Create("c", id(i), f); err != nil {
						return err
					}
					if i%11 == 4 {
						if err := tx.Delete("c", id(i)); err != nil {
							return err
						}
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			mustSync(t, a, "p")
			mustSync(t, b, "p")
			// The records are new to b: their read models were read from
			// their changes, and no Automerge document was built for them.
			cached := 0
			for i := range n {
				if d, _, ok := b.cache.get(cacheKey("c", id(i))); ok {
					if cached++; !d.Deferred() {
						t.Fatalf("the fresh pull built %s's document", id(i))
					}
				}
			}
			if cached == 0 {
				t.Fatal("the fresh pull cached none of its records")
			}
			if err := checkViews(t, b, "c"); err != nil {
				t.Fatalf("after the fresh pull: %v", err)
			}
			if names, err := b.Collections(); err != nil || len(names) != 1 || names[0] != "c" {
				t.Fatalf("b's collections after the fresh pull: %v, %v", names, err)
			}
			ca, cb := a.Collection("c"), b.Collection("c")
			for i := range n {
				if i%11 == 4 {
					if err := ca.Put(id(i), map[string]any{"cat": "restored"}); err != nil {
						t.Fatal(err)
					}
					continue
				}
				if i%13 == 6 {
					if err := ca.Delete(id(i)); err != nil {
						t.Fatal(err)
					}
					continue
				}
				setField(t, ca, id(i), "cat", fmt.Sprintf("a%d", i))
				switch i % 4 {
				case 0:
					setField(t, cb, id(i), "cat", fmt.Sprintf("b%d", i)) // conflicts: b's wins
				case 1:
					setField(t, cb, id(i), "note", "b") // no conflict
				}
			}
			mustSync(t, a, "p")
			mustSync(t, b, "p")
			if err := checkViews(t, b, "c"); err != nil {
				t.Fatalf("after merging a's edits: %v", err)
			}
			for i := range n {
				var got map[string]any
				err := cb.Get(id(i), &got)
				switch {
				case i%11 == 4:
					if err != nil || got["cat"] != "restored" {
						t.Fatalf("%s: %v, %v; want a's restore", id(i), got, err)
					}
				case i%13 == 6:
					if err == nil {
						t.Fatalf("%s: %v; want a's delete", id(i), got)
					}
				case i%4 == 0:
					if err != nil || got["cat"] != fmt.Sprintf("b%d", i) {
						t.Fatalf("%s: %v, %v; want b's cat", id(i), got, err)
					}
				case i%4 == 1:
					if err != nil || got["cat"] != fmt.Sprintf("a%d", i) || got["note"] != "b" {
						t.Fatalf("%s: %v, %v; want a's cat and b's note", id(i), got, err)
					}
				default:
					if err != nil || got["cat"] != fmt.Sprintf("a%d", i) {
						t.Fatalf("%s: %v, %v; want a's cat", id(i), got, err)
					}
				}
			}
		})
	}
}

// A read model prepared for a document is stored only for that document
// at the heads it was read at: one read before the document changed is
// not, and the read model stored is then read from the document itself.
func TestPreparedViewOfOtherVersionIsNotStored(t *testing.T) {
	r := mem(t)
	d, err := crdt.New("aaaaaaaa")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	if err := d.Put(map[string]any{"name": "tea", "qty": int64(1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Commit("", time.Time{}); err != nil {
		t.Fatal(err)
	}
	stale := prepareView(d)
	if err := d.Set(crdt.Path{"qty"}, int64(2)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Commit("", time.Time{}); err != nil {
		t.Fatal(err)
	}
	store := func(id string, doc *crdt.Doc, pv *preparedView) map[string]any {
		t.Helper()
		m := meta{heads: doc.Heads(), deleted: doc.Deleted()}
		err := r.db.Update(func(txn *badger.Txn) error { return r.putView(txn, "c", id, doc, m, pv) })
		if err != nil {
			t.Fatal(err)
		}
		var v view
		err = r.db.View(func(txn *badger.Txn) (err error) {
			var ok bool
			if v, ok, err = readView(txn, "c", id); err == nil && !ok {
				err = fmt.Errorf("no read model for %s", id)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		want, err := doc.PackedFields()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(v.packed, want) || !v.heads.Equal(m.heads) {
			t.Fatalf("%s: read model %v at %v, want the document's %v at %v", id, v.packed, v.heads, want, m.heads)
		}
		f, err := v.plainFields()
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	if f := store("changed", d, stale); f["qty"] != int64(2) {
		t.Fatalf("a read model prepared before the change was stored: %v", f)
	}
	// Read again at the document's heads, the prepared one is its own.
	if f := store("fresh", d, prepareView(d)); f["qty"] != int64(2) {
		t.Fatalf("read model %v", f)
	}
}

// A batch queues the merges of the window after the one it stores, behind
// that window's: while the batch waits for a window's first merge, the
// other core goes on to the next window's. Here the first record's merge
// is held until a merge of the second window starts (or ten seconds
// pass); every record is stored after.
func TestMergesOfTheNextWindowRunAhead(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2)) // merges run only with a second core
	r := mem(t)
	const n = 2 * prepWindow
	recs := make([]remoteRec, n)
	for i := range recs {
		d, err := crdt.New("aaaaaaaa")
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Put(map[string]any{"n": int64(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Commit("", time.Time{}); err != nil {
			t.Fatal(err)
		}
		recs[i] = remoteRec{id: fmt.Sprintf("r%03d", i), data: d.Save(), relay: d.Heads()}
		d.Free()
	}
	nextWindow := make(chan struct{})
	var once sync.Once
	var ranAhead atomic.Bool
	mergeStarting = func(id string) {
		switch {
		case id == recs[0].id:
			select {
			case <-nextWindow:
				ranAhead.Store(true)
			case <-time.After(10 * time.Second):
			}
		case id >= recs[prepWindow].id:
			once.Do(func() { close(nextWindow) })
		}
	}
	defer func() { mergeStarting = nil }()
	res, err := r.applyHolding("c", recs, r.mergeOp, true, nil)
	freeMerged(res.conflicted)
	if err != nil {
		t.Fatal(err)
	}
	if !ranAhead.Load() {
		t.Fatal("no merge of the second window started while the first record's merge was held")
	}
	c := r.Collection("c")
	for i, rec := range recs {
		var got map[string]any
		if err := c.Get(rec.id, &got); err != nil || got["n"] != int64(i) {
			t.Fatalf("%s: %v, %v", rec.id, got, err)
		}
	}
}
