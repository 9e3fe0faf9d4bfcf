package replica

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

type ixProduct struct {
	Name  string  `ferry:"name"`
	Price float64 `ferry:"price"`
	Cat   string  `ferry:"cat"`
}

// ixSeed writes n products p000...: category c(i%5), price (i*7%100)/10.
func ixSeed(t *testing.T, c *Collection, n int) map[string]ixProduct {
	t.Helper()
	all := map[string]ixProduct{}
	for i := range n {
		id := fmt.Sprintf("p%03d", i)
		p := ixProduct{Name: fmt.Sprintf("product %d", i), Price: float64(i*7%100) / 10, Cat: fmt.Sprintf("c%d", i%5)}
		if err := c.Put(id, p); err != nil {
			t.Fatal(err)
		}
		all[id] = p
	}
	return all
}

// ixWant lists the IDs of all that keep selects, ordered by price then ID
// (descending if desc).
func ixWant(all map[string]ixProduct, keep func(ixProduct) bool, desc bool) []string {
	var ids []string
	for id, p := range all {
		if keep(p) {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(a, b string) int {
		pa, pb := all[a], all[b]
		switch {
		case pa.Cat != pb.Cat:
			return compareStrings(pa.Cat, pb.Cat)
		case pa.Price < pb.Price:
			return -1
		case pa.Price > pb.Price:
			return 1
		}
		return compareStrings(a, b)
	})
	if desc {
		slices.Reverse(ids)
	}
	return ids
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func ixSelect(t *testing.T, c *Collection, q Query[ixProduct]) ([]string, []Row[ixProduct]) {
	t.Helper()
	var ids []string
	var rows []Row[ixProduct]
	for row, err := range Select(c, q) {
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, row.ID)
		rows = append(rows, row)
	}
	return ids, rows
}

func TestIndexQueries(t *testing.T) {
	r := open(t, "", &Options{InMemory: true})
	c := r.Collection("products")
	all := ixSeed(t, c, 700) // built for existing records, past a page
	if err := c.EnsureIndex("by_cat_price", IndexOptions{Fields: []string{"cat", "price"}}); err != nil {
		t.Fatal(err)
	}
	if err := checkIndexes(r, "products"); err != nil {
		t.Fatal(err)
	}
	// Equality and a range.
	q := Query[ixProduct]{Index: "by_cat_price", Eq: []any{"c2"}, From: 2, To: 5.5}
	got, rows := ixSelect(t, c, q)
	want := ixWant(all, func(p ixProduct) bool { return p.Cat == "c2" && p.Price >= 2 && p.Price < 5.5 }, false)
	if !slices.Equal(got, want) || len(want) < 10 {
		t.Fatalf("c2, 2 <= price < 5.5:\n got %v\nwant %v", got, want)
	}
	if rows[0].Value != all[rows[0].ID] {
		t.Fatalf("row %s decoded as %+v", rows[0].ID, rows[0].Value)
	}
	// Descending, and paged with a cursor both ways.
	for _, desc := range []bool{false, true} {
		q := Query[ixProduct]{Index: "by_cat_price", Eq: []any{"c3"}, Desc: desc}
		want := ixWant(all, func(p ixProduct) bool { return p.Cat == "c3" }, desc)
		got, _ := ixSelect(t, c, q)
		if !slices.Equal(got, want) {
			t.Fatalf("c3 desc=%v:\n got %v\nwant %v", desc, got, want)
		}
		var paged []string
		q.Limit = 9
		for {
			ids, rows := ixSelect(t, c, q)
			paged = append(paged, ids...)
			if len(ids) < q.Limit {
				break
			}
			q.After = rows[len(rows)-1].Cursor
		}
		if !slices.Equal(paged, want) {
			t.Fatalf("c3 desc=%v paged by 9:\n got %v\nwant %v", desc, paged, want)
		}
	}
	// The whole index: every record, ordered by category then price,
	// with a predicate on top; equality on both fields.
	got, _ = ixSelect(t, c, Query[ixProduct]{Index: "by_cat_price", Where: func(p *ixProduct) bool { return p.Price < 1 }})
	if want := ixWant(all, func(p ixProduct) bool { return p.Price < 1 }, false); !slices.Equal(got, want) {
		t.Fatalf("price < 1 over the index:\n got %v\nwant %v", got, want)
	}
	got, _ = ixSelect(t, c, Query[ixProduct]{Index: "by_cat_price", Eq: []any{"c0", int64(3)}})
	if want := ixWant(all, func(p ixProduct) bool { return p.Cat == "c0" && p.Price == 3 }, false); !slices.Equal(got, want) || len(want) == 0 {
		t.Fatalf("c0, price 3: got %v, want %v", got, want)
	}

	// Writes keep it: a changed price moves, a delete leaves, a restore
	// and a unit of work come back, text counts as a string.
	if err := c.Update("p002", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 9.9) }); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete("p007"); err != nil {
		t.Fatal(err)
	}
	err := r.Write(func(tx *Tx) error {
		tx.Put("products", "p012", map[string]any{"cat": crdt.Text("c2"), "price": int64(3)})
		return tx.Put("products", "new", ixProduct{Name: "new", Price: 0.5, Cat: "c2"})
	})
	if err != nil {
		t.Fatal(err)
	}
	p := all["p002"]
	p.Price = 9.9
	all["p002"] = p
	delete(all, "p007")
	all["p012"] = ixProduct{Name: all["p012"].Name, Price: 3, Cat: "c2"}
	all["new"] = ixProduct{Name: "new", Price: 0.5, Cat: "c2"}
	got, _ = ixSelect(t, c, Query[ixProduct]{Index: "by_cat_price", Eq: []any{"c2"}})
	if want := ixWant(all, func(p ixProduct) bool { return p.Cat == "c2" }, false); !slices.Equal(got, want) {
		t.Fatalf("c2 after writes:\n got %v\nwant %v", got, want)
	}
	if err := checkIndexes(r, "products"); err != nil {
		t.Fatal(err)
	}

	// Bad queries.
	for name, q := range map[string]Query[ixProduct]{
		"unknown index":   {Index: "nope"},
		"too many values": {Index: "by_cat_price", Eq: []any{"c1", 1, 2}},
		"range past end":  {Index: "by_cat_price", Eq: []any{"c1", 1}, From: 2},
		"map value":       {Index: "by_cat_price", Eq: []any{map[string]any{}}},
		"range, no index": {From: 1},
		"bad cursor":      {Index: "by_cat_price", After: "!!"},
	} {
		for _, err := range Select(c, q) {
			if !errors.Is(err, ErrInvalidIndex) {
				t.Errorf("%s: %v, want ErrInvalidIndex", name, err)
			}
		}
	}
}

// An index's definition is stored: writes after a reopen keep it before
// the app declares it again. Declaring it again is a no-op; with other
// fields it is rebuilt; dropped, its entries go.
func TestIndexLifecycle(t *testing.T) {
	dir := t.TempDir()
	r := open(t, dir, &Options{GCInterval: -1, Relaxed: true})
	c := r.Collection("products")
	all := ixSeed(t, c, 50)
	if err := c.EnsureIndex("by_cat_price", IndexOptions{Fields: []string{"cat", "price"}}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r = open(t, dir, &Options{GCInterval: -1, Relaxed: true})
	c = r.Collection("products")
	if got := c.Indexes(); !slices.Equal(got["by_cat_price"], []string{"cat", "price"}) || len(got) != 1 {
		t.Fatalf("Indexes after reopen = %v", got)
	}
	if err := c.Put("p001", map[string]any{"cat": "c9"}); err != nil {
		t.Fatal(err)
	}
	got, _ := ixSelect(t, c, Query[ixProduct]{Index: "by_cat_price", Eq: []any{"c9"}})
	if !slices.Equal(got, []string{"p001"}) {
		t.Fatalf("c9 after a write since reopening: %v", got)
	}
	if err := c.EnsureIndex("by_cat_price", IndexOptions{Fields: []string{"cat", "price"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.EnsureIndex("by_cat_price", IndexOptions{Fields: []string{"price"}}); err != nil {
		t.Fatal(err)
	}
	if err := checkIndexes(r, "products"); err != nil {
		t.Fatal(err)
	}
	got, _ = ixSelect(t, c, Query[ixProduct]{Index: "by_cat_price", From: 9.5})
	var want []string
	for id, p := range all {
		if p.Price >= 9.5 {
			want = append(want, id)
		}
	}
	if len(got) != len(want) || len(want) == 0 {
		t.Fatalf("price >= 9.5 after redefining: %v, want %v", got, want)
	}
	if err := c.DropIndex("by_cat_price"); err != nil {
		t.Fatal(err)
	}
	if n, _ := r.countPrefix(indexPrefix("products", "by_cat_price")); n != 0 || len(c.Indexes()) != 0 {
		t.Fatalf("after DropIndex: %d entries, indexes %v", n, c.Indexes())
	}
	for _, err := range Select(c, Query[ixProduct]{Index: "by_cat_price"}) {
		if !errors.Is(err, ErrInvalidIndex) {
			t.Fatalf("query of a dropped index: %v", err)
		}
	}
	if err := c.EnsureIndex("", IndexOptions{Fields: []string{"x"}}); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("EnsureIndex without a name: %v", err)
	}
	if err := c.EnsureIndex("x", IndexOptions{}); !errors.Is(err, ErrInvalidIndex) {
		t.Fatalf("EnsureIndex without fields: %v", err)
	}
}

// Building an index while writers write leaves it exact: each record is
// indexed by the build or by its write, never neither, never stale.
func TestIndexBuildRacesWrites(t *testing.T) {
	r := open(t, "", &Options{InMemory: true})
	c := r.Collection("products")
	ixSeed(t, c, 600)
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for i := range 300 {
				id := fmt.Sprintf("p%03d", (i*2+w)%600)
				if err := c.Put(id, map[string]any{"price": float64(i)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	if err := c.EnsureIndex("by_price", IndexOptions{Fields: []string{"price"}}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := checkIndexes(r, "products"); err != nil {
		t.Fatal(err)
	}
	if err := c.DropIndex("by_price"); err != nil {
		t.Fatal(err)
	}
}

// countPrefix counts the keys with prefix.
func (r *Replica) countPrefix(prefix []byte) (int, error) {
	n := 0
	err := r.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}

// Building an index over the records already there reports its progress,
// page by page, with no lock held: the callback may read the replica.
func TestIndexBuildProgress(t *testing.T) {
	r := open(t, "", &Options{InMemory: true, GCInterval: -1})
	c := r.Collection("products")
	ixSeed(t, c, 600)
	var seen []int
	err := c.EnsureIndex("by_cat", IndexOptions{Fields: []string{"cat"}, Progress: func(done int) {
		var p ixProduct
		if err := c.Get("p000", &p); err != nil { // a read from the callback
			t.Errorf("Get from Progress: %v", err)
		}
		seen = append(seen, done)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{256, 512, 600}; !slices.Equal(seen, want) {
		t.Fatalf("progress %v, want %v", seen, want)
	}
}

// TestIndexBuildRebuildsLostViews: an index built over records whose read
// models are missing or damaged, and over tombstones, rebuilds the read
// models and indexes every live record, across pages, and counts only
// those in its progress.
func TestIndexBuildRebuildsLostViews(t *testing.T) {
	r := open(t, "", &Options{InMemory: true, GCInterval: -1})
	c := r.Collection("products")
	all := ixSeed(t, c, 600)
	for _, id := range []string{"p003", "p300"} {
		if err := c.Delete(id); err != nil {
			t.Fatal(err)
		}
		delete(all, id)
	}
	err := r.db.Update(func(txn *badger.Txn) error {
		for _, id := range []string{"p001", "p257", "p599"} {
			if err := txn.Delete(recKey('v', "products", id)); err != nil {
				return err
			}
		}
		v, _, err := getKey(txn, recKey('v', "products", "p002"))
		if err != nil {
			return err
		}
		v[len(v)-1] ^= 0xff // fails its checksum
		return txn.Set(recKey('v', "products", "p002"), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	var last int
	if err := c.EnsureIndex("by_cat", IndexOptions{Fields: []string{"cat"}, Progress: func(done int) { last = done }}); err != nil {
		t.Fatal(err)
	}
	if last != len(all) {
		t.Errorf("progress ended at %d, want the %d live records", last, len(all))
	}
	if err := checkIndexes(r, "products"); err != nil {
		t.Fatal(err)
	}
	for _, cat := range []string{"c1", "c2", "c4"} {
		got, _ := ixSelect(t, c, Query[ixProduct]{Index: "by_cat", Eq: []any{cat}})
		want := ixWant(all, func(p ixProduct) bool { return p.Cat == cat }, false)
		slices.Sort(want) // by_cat orders a category's records by ID
		if !slices.Equal(got, want) {
			t.Fatalf("%s:\n got %v\nwant %v", cat, got, want)
		}
	}
}
