package replica

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Indexed values longer than Badger takes in a key (65,000 bytes).

// longText is a text of n bytes that ends with tag.
func longText(n int, tag string) string { return strings.Repeat("n", n-len(tag)) + tag }

// selectIDs runs q and returns the IDs of its rows, in order.
func selectIDs(t *testing.T, c *Collection, q Query[map[string]any]) []string {
	t.Helper()
	var ids []string
	for row, err := range Select(c, q) {
		if err != nil {
			t.Fatalf("select %+v: %v", q, err)
		}
		ids = append(ids, row.ID)
	}
	return ids
}

func wantIDs(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: %v, want %v", what, got, want)
	}
}

// checkLongIndex checks the index "body" of c over the records
// longRecords wrote.
func checkLongIndex(t *testing.T, c *Collection) {
	t.Helper()
	b1, b2 := longText(70_000, "1"), longText(70_000, "2")
	wantIDs(t, "eq b1", selectIDs(t, c, Query[map[string]any]{Index: "body", Eq: []any{b1}}), "l2")
	wantIDs(t, "eq b2", selectIDs(t, c, Query[map[string]any]{Index: "body", Eq: []any{b2}}), "l1")
	wantIDs(t, "eq other", selectIDs(t, c, Query[map[string]any]{Index: "body", Eq: []any{longText(70_000, "3")}}))
	wantIDs(t, "all", selectIDs(t, c, Query[map[string]any]{Index: "body"}), "l2", "l1", "s")
	wantIDs(t, "desc", selectIDs(t, c, Query[map[string]any]{Index: "body", Desc: true}), "s", "l1", "l2")
	wantIDs(t, "b1 to b2", selectIDs(t, c, Query[map[string]any]{Index: "body", From: b1, To: b2}), "l2")
	wantIDs(t, "to b1", selectIDs(t, c, Query[map[string]any]{Index: "body", To: b1}))
	wantIDs(t, "from b2", selectIDs(t, c, Query[map[string]any]{Index: "body", From: b2}), "l1", "s")
	var m map[string]any
	if err := c.Get("l1", &m); err != nil || m["body"] != b2 {
		t.Fatalf("l1: %v (body of %d bytes)", err, len(fmt.Sprint(m["body"])))
	}
}

// longRecords writes two records whose bodies are 70,000 bytes long and
// differ only in their last byte, in the reverse order of their IDs, and
// a short one.
func longRecords(t *testing.T, r *Replica) {
	t.Helper()
	c := r.Collection("c")
	for id, body := range map[string]string{"l1": longText(70_000, "2"), "l2": longText(70_000, "1"), "s": "short"} {
		if err := c.Put(id, map[string]any{"body": body}); err != nil {
			t.Fatalf("put %s: %v", id, err)
		}
	}
}

func indexBody(t *testing.T, r *Replica) {
	t.Helper()
	if err := r.Collection("c").EnsureIndex("body", IndexOptions{Fields: []string{"body"}}); err != nil {
		t.Fatal(err)
	}
}

func TestIndexLongValueLocalWrite(t *testing.T) {
	r := mem(t)
	indexBody(t, r)
	longRecords(t, r)
	checkLongIndex(t, r.Collection("c"))
}

func TestIndexLongValueBuild(t *testing.T) {
	r := mem(t)
	longRecords(t, r)
	indexBody(t, r)
	checkLongIndex(t, r.Collection("c"))
}

// A device whose index holds a field another device (with no index)
// fills with long values pulls them.
func TestIndexLongValuePull(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	indexBody(t, b)
	longRecords(t, a)
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	checkLongIndex(t, b.Collection("c"))
}

func TestIndexLongValueRefresh(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	if err := a.Collection("c").Put("s0", map[string]any{"body": "x"}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	indexBody(t, b)
	longRecords(t, a)
	mustSync(t, a, "p")
	refreshSync(t, b, "p")
	c := b.Collection("c")
	if err := c.Delete("s0"); err != nil {
		t.Fatal(err)
	}
	checkLongIndex(t, c)
}

func TestIndexLongValueLiveApply(t *testing.T) {
	e := newSyncEnv(t)
	a := e.device(nil)
	opts, live := liveOptions(e)
	b := e.liveDevice(opts)
	indexBody(t, b)
	select {
	case <-live:
	case <-time.After(30 * time.Second):
		t.Fatal("b did not go live")
	}
	c := b.Collection("c")
	f := c.Watch(64)
	defer f.Close()
	longRecords(t, a)
	mustSync(t, a, "p")
	deadline := time.After(30 * time.Second)
	for _, id := range []string{"l1", "l2", "s"} {
		for {
			var m map[string]any
			if err := c.Get(id, &m); err == nil {
				break
			}
			select {
			case _, ok := <-f.C:
				if !ok {
					t.Fatalf("feed closed: %v", f.Err())
				}
			case <-deadline:
				st, _ := b.Status("live")
				t.Fatalf("%s not applied after 30s (live: %+v)", id, st)
			}
		}
	}
	checkLongIndex(t, c)
}

// ixRec is a record of the property test: the values its index fields
// hold.
type ixRec struct {
	id string
	s  string
	n  int64
}

// TestIndexCutProperty checks index queries against a scan filtered and
// ordered in Go, over values around the bound where entries are cut: short
// ones, ones just under, at and past it, and ones sharing long prefixes,
// as records are written, rewritten and deleted.
func TestIndexCutProperty(t *testing.T) {
	// FERRY_INDEXCUT_SEED repeats a failing run.
	seed, ok := envSeed(t, "FERRY_INDEXCUT_SEED")
	if !ok {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (FERRY_INDEXCUT_SEED)", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	r := mem(t)
	c := r.Collection("c")
	for name, f := range map[string][]string{"s": {"s"}, "sn": {"s", "n"}} {
		if err := c.EnsureIndex(name, IndexOptions{Fields: f}); err != nil {
			t.Fatal(err)
		}
	}
	// A string encodes as 3 bytes more than it holds (without NULs):
	// lengths around the bound for one field and for two.
	lengths := []int{0, 1, 5, 40}
	for _, b := range []int{indexValueBound - 3, indexValueBound - 12} {
		for d := -3; d <= 3; d++ {
			lengths = append(lengths, b+d)
		}
	}
	lengths = append(lengths, indexValueBound+50, 2*indexValueBound, 5000)
	randString := func() string {
		n := lengths[rng.IntN(len(lengths))]
		b := make([]byte, n)
		shared := rng.IntN(3) > 0 // most share a long prefix of a's
		for i := range b {
			switch {
			case shared && i < n-4:
				b[i] = 'a'
			default:
				b[i] = "ab\x00"[rng.IntN(3)]
			}
		}
		return string(b)
	}
	recs := map[string]ixRec{}
	write := func(id string) {
		x := ixRec{id: id, s: randString(), n: int64(rng.IntN(4))}
		if err := c.Put(id, map[string]any{"s": x.s, "n": x.n}); err != nil {
			t.Fatal(err)
		}
		recs[id] = x
	}
	for i := 0; i < 120; i++ {
		write(fmt.Sprintf("r%03d", rng.IntN(1000)))
	}
	pool := func() string {
		if rng.IntN(4) == 0 || len(recs) == 0 {
			return randString()
		}
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range recs {
				if !yield(k) {
					return
				}
			}
		})
		return recs[keys[rng.IntN(len(keys))]].s
	}
	for round := 0; round < 6; round++ {
		for trial := 0; trial < 30; trial++ {
			q := Query[map[string]any]{Desc: rng.IntN(2) == 0}
			var keep func(x ixRec) bool
			switch rng.IntN(4) {
			case 0: // a range of s
				q.Index = "s"
				if rng.IntN(3) > 0 {
					q.From = pool()
				}
				if rng.IntN(3) > 0 {
					q.To = pool()
				}
			case 1:
				q.Index = "s"
				q.Eq = []any{pool()}
			case 2: // one s, a range of n
				q.Index = "sn"
				q.Eq = []any{pool()}
				if rng.IntN(2) == 0 {
					q.From = int64(rng.IntN(4))
				}
				if rng.IntN(2) == 0 {
					q.To = int64(rng.IntN(5))
				}
			default:
				q.Index = "sn"
				if rng.IntN(2) == 0 {
					q.From = pool()
				}
				if rng.IntN(2) == 0 {
					q.To = pool()
				}
			}
			keep = func(x ixRec) bool {
				if q.Eq != nil && x.s != q.Eq[0] {
					return false
				}
				if q.Eq == nil {
					return (q.From == nil || x.s >= q.From.(string)) && (q.To == nil || x.s < q.To.(string))
				}
				return (q.From == nil || x.n >= q.From.(int64)) && (q.To == nil || x.n < q.To.(int64))
			}
			var want []string
			var sel []ixRec
			for _, x := range recs {
				if keep(x) {
					sel = append(sel, x)
				}
			}
			slices.SortFunc(sel, func(a, b ixRec) int {
				c := strings.Compare(a.s, b.s)
				if c == 0 && q.Index == "sn" {
					c = cmp.Compare(a.n, b.n)
				}
				if c == 0 {
					c = strings.Compare(a.id, b.id)
				}
				if q.Desc {
					return -c
				}
				return c
			})
			for _, x := range sel {
				want = append(want, x.id)
			}
			// Whole, and a few rows at a time resuming from cursors.
			got := selectIDs(t, c, q)
			if !slices.Equal(got, want) {
				t.Fatalf("round %d: index %s eq %v from %v to %v desc %v:\n got %v\nwant %v", round, q.Index,
					short(q.Eq), short(q.From), short(q.To), q.Desc, got, want)
			}
			q.Limit = 1 + rng.IntN(5)
			var paged []string
			for {
				n := 0
				for row, err := range Select(c, q) {
					if err != nil {
						t.Fatal(err)
					}
					paged = append(paged, row.ID)
					q.After = row.Cursor
					n++
				}
				if n < q.Limit {
					break
				}
			}
			if !slices.Equal(paged, want) {
				t.Fatalf("round %d: paged by %d: %v, want %v", round, q.Limit, paged, want)
			}
		}
		// Rewrite and delete some records, so that cut entries are
		// replaced and removed.
		for id := range recs {
			switch rng.IntN(4) {
			case 0:
				write(id)
			case 1:
				if err := c.Delete(id); err != nil {
					t.Fatal(err)
				}
				delete(recs, id)
			}
		}
		for i := 0; i < 20; i++ {
			write(fmt.Sprintf("r%03d", rng.IntN(1000)))
		}
		// One entry per live record and index, none stale.
		for _, name := range []string{"s", "sn"} {
			if n := countKeys(t, r, indexPrefix("c", name)); n != len(recs) {
				t.Fatalf("round %d: index %s has %d entries for %d records", round, name, n, len(recs))
			}
		}
	}
}

func short(v any) string {
	s := fmt.Sprint(v)
	if len(s) > 20 {
		return fmt.Sprintf("%q...(%d bytes)", s[:20], len(s))
	}
	return fmt.Sprintf("%q", s)
}

func countKeys(t *testing.T, r *Replica, prefix []byte) int {
	t.Helper()
	n := 0
	err := r.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Records whose values share their first indexValueBound bytes, more than
// a page of them, come in the order of their values, not of their IDs,
// whole and resumed from cursors.
func TestIndexCutGroupPastPage(t *testing.T) {
	r := mem(t)
	c := r.Collection("c")
	if err := c.EnsureIndex("s", IndexOptions{Fields: []string{"s"}}); err != nil {
		t.Fatal(err)
	}
	prefix := strings.Repeat("x", indexValueBound+100)
	const n = scanPage + 60
	want := make([]string, n)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("r%04d", n-i) // IDs in the reverse order of values
		if err := c.Put(id, map[string]any{"s": fmt.Sprintf("%s%05d", prefix, i)}); err != nil {
			t.Fatal(err)
		}
		want[i] = id
	}
	// Beside them, records before and after the group.
	for id, s := range map[string]string{"a": "a", "z": "z", "w": prefix[:indexValueBound-10]} {
		if err := c.Put(id, map[string]any{"s": s}); err != nil {
			t.Fatal(err)
		}
	}
	all := append(append([]string{"a", "w"}, want...), "z")
	wantIDs(t, "asc", selectIDs(t, c, Query[map[string]any]{Index: "s"}), all...)
	wantIDs(t, "desc", selectIDs(t, c, Query[map[string]any]{Index: "s", Desc: true}), reversed(all)...)
	from, to := fmt.Sprintf("%s%05d", prefix, 10), fmt.Sprintf("%s%05d", prefix, 300)
	wantIDs(t, "range", selectIDs(t, c, Query[map[string]any]{Index: "s", From: from, To: to}), want[10:300]...)
	for _, desc := range []bool{false, true} {
		q := Query[map[string]any]{Index: "s", Limit: 7, Desc: desc}
		var got []string
		for {
			k := 0
			for row, err := range Select(c, q) {
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, row.ID)
				q.After = row.Cursor
				k++
			}
			if k < q.Limit {
				break
			}
		}
		w := all
		if desc {
			w = reversed(all)
		}
		wantIDs(t, fmt.Sprintf("paged, desc %v", desc), got, w...)
	}
}

func reversed(s []string) []string {
	s = slices.Clone(s)
	slices.Reverse(s)
	return s
}

// A store written before entries were cut (format 2) holds long entries
// whole: opening it cuts them, and queries find their records.
func TestIndexCutUpgradesOldEntries(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := r.Collection("c")
	if err := c.EnsureIndex("s", IndexOptions{Fields: []string{"s"}}); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("q", 3000)
	for id, s := range map[string]string{"long": long, "short": "s"} {
		if err := c.Put(id, map[string]any{"s": s}); err != nil {
			t.Fatal(err)
		}
	}
	def := indexDef{Name: "s", Fields: []string{"s"}}
	fields := map[string]any{"s": long}
	cut, full := indexEntry("c", def, fields, "long"), fullIndexKey("c", def, fields, "long")
	// What a Ferry of format 2 wrote: the whole key.
	err = r.db.Update(func(txn *badger.Txn) error {
		if err := txn.Delete(cut); err != nil {
			return err
		}
		if err := txn.Set(full, []byte("long")); err != nil {
			return err
		}
		return txn.Set(keyFormat, binary.BigEndian.AppendUint32(nil, 2))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r = open(t, dir, nil)
	c = r.Collection("c")
	wantIDs(t, "eq long", selectIDs(t, c, Query[map[string]any]{Index: "s", Eq: []any{long}}), "long")
	wantIDs(t, "all", selectIDs(t, c, Query[map[string]any]{Index: "s"}), "long", "short")
	err = r.db.View(func(txn *badger.Txn) error {
		if _, ok, _ := getKey(txn, full); ok {
			t.Error("the long entry is still there")
		}
		if _, ok, _ := getKey(txn, cut); !ok {
			t.Error("no cut entry")
		}
		v, _, _ := getKey(txn, keyFormat)
		if !bytes.Equal(v, binary.BigEndian.AppendUint32(nil, formatVersion)) {
			t.Errorf("format %x", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
