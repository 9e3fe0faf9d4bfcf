package replica

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

type product struct {
	Name  string   `ferry:"name"`
	Price float64  `ferry:"price"`
	Qty   int      `ferry:"qty"`
	Tags  []string `ferry:"tags,omitempty"`
}

func open(t testing.TB, dir string, o *Options) *Replica {
	t.Helper()
	r, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func mem(t testing.TB) *Replica { return open(t, "", &Options{InMemory: true}) }

func coll(t testing.TB, r *Replica, name string) *Collection {
	t.Helper()
	c := r.Collection(name)
	return c
}

func TestRecordLifecycle(t *testing.T) {
	r := mem(t)
	c := coll(t, r, "products")

	id, err := c.Insert(product{Name: "Tea", Price: 2.5, Qty: 3, Tags: []string{"hot"}})
	if err != nil {
		t.Fatal(err)
	}
	var p product
	if err := c.Get(id, &p); err != nil {
		t.Fatal(err)
	}
	if p.Name != "Tea" || p.Price != 2.5 || p.Qty != 3 || len(p.Tags) != 1 {
		t.Fatalf("Get = %+v", p)
	}

	if err := c.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, 7) }); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := c.Get(id, &m); err != nil {
		t.Fatal(err)
	}
	if m["qty"] != int64(7) || m["name"] != "Tea" {
		t.Fatalf("Get into map = %#v", m)
	}

	if err := c.Delete(id); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(id, &p); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
	}
	if err := c.Update(id, func(*crdt.Doc) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update after Delete: %v, want ErrNotFound", err)
	}
	if err := c.Delete(id); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	if err := c.Delete("never-was"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete of unknown record: %v", err)
	}

	// Put restores a deleted record.
	if err := c.Put(id, product{Name: "Green tea", Qty: 1}); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(id, &p); err != nil || p.Name != "Green tea" {
		t.Fatalf("after restore: %+v, %v", p, err)
	}
}

func TestCreateWithAppID(t *testing.T) {
	r := mem(t)
	c := coll(t, r, "products")
	if err := c.Create("sku-1", product{Name: "A"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Create("sku-1", product{Name: "B"}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Create: %v, want ErrExists", err)
	}
	var p product
	if err := c.Get("sku-1", &p); err != nil || p.Name != "A" {
		t.Fatalf("failed Create changed the record: %+v %v", p, err)
	}
	if err := c.Delete("sku-1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Create("sku-1", product{Name: "C"}); err != nil {
		t.Fatalf("Create over a tombstone: %v", err)
	}
}

func TestInsertIDsAreUUIDv7InOrder(t *testing.T) {
	r := mem(t)
	c := coll(t, r, "notes")
	var ids []string
	for i := 0; i < 20; i++ {
		id, err := c.Insert(map[string]any{"n": i})
		if err != nil {
			t.Fatal(err)
		}
		if len(id) != 36 || id[14] != '7' {
			t.Fatalf("ID %q is not a UUIDv7", id)
		}
		ids = append(ids, id)
	}
	recs, err := collect(c.Scan(ScanOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	for i, rec := range recs {
		if rec.ID != ids[i] || rec.Fields["n"] != int64(i) {
			t.Fatalf("scan[%d] = %s %v, want %s n=%d", i, rec.ID, rec.Fields, ids[i], i)
		}
	}
}

func TestScan(t *testing.T) {
	r := mem(t)
	c := coll(t, r, "items")
	for _, id := range []string{"a1", "a2", "a3", "b1", "b2", "c1"} {
		if err := c.Put(id, map[string]any{"id": id}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Delete("a2"); err != nil {
		t.Fatal(err)
	}
	other := coll(t, r, "items2") // a name that extends "items" must not leak in
	if err := other.Put("a0", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	ids := func(o ScanOptions) string {
		recs, err := collect(c.Scan(o))
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, r := range recs {
			s = append(s, r.ID)
		}
		return strings.Join(s, ",")
	}
	for _, tc := range []struct {
		o    ScanOptions
		want string
	}{
		{ScanOptions{}, "a1,a3,b1,b2,c1"},
		{ScanOptions{Deleted: true}, "a1,a2,a3,b1,b2,c1"},
		{ScanOptions{Prefix: "a"}, "a1,a3"},
		{ScanOptions{Prefix: "b", Limit: 1}, "b1"},
		{ScanOptions{After: "a3", Limit: 2}, "b1,b2"},
		{ScanOptions{Prefix: "b", After: "b1"}, "b2"},
		{ScanOptions{Prefix: "z"}, ""},
		// After sorting before the prefix must not end the scan early.
		{ScanOptions{Prefix: "b", After: "a"}, "b1,b2"},
		{ScanOptions{Prefix: "b", After: "0"}, "b1,b2"},
		{ScanOptions{Prefix: "c", After: "b9"}, "c1"},
	} {
		if got := ids(tc.o); got != tc.want {
			t.Errorf("Scan(%+v) = %q, want %q", tc.o, got, tc.want)
		}
	}
	names, err := r.Collections()
	if err != nil || strings.Join(names, ",") != "items,items2" {
		t.Fatalf("Collections = %v, %v", names, err)
	}
}

func TestUnitOfWorkIsAtomic(t *testing.T) {
	r := mem(t)
	orders, stock := coll(t, r, "orders"), coll(t, r, "stock")
	if err := stock.Put("tea", map[string]any{"qty": 5}); err != nil {
		t.Fatal(err)
	}

	// Commits together.
	err := r.Write(func(tx *Tx) error {
		if _, err := tx.Insert("orders", map[string]any{"item": "tea"}); err != nil {
			return err
		}
		return tx.Update("stock", "tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, 4) })
	})
	if err != nil {
		t.Fatal(err)
	}

	// A failing op rolls everything back, including the edits already
	// applied to cached documents.
	boom := errors.New("boom")
	err = r.Write(func(tx *Tx) error {
		tx.Put("orders", "o2", map[string]any{"item": "tea"})
		tx.Update("stock", "tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, 3) })
		tx.Update("stock", "tea", func(d *crdt.Doc) error { return boom })
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want boom", err)
	}
	var s map[string]any
	if err := stock.Get("tea", &s); err != nil || s["qty"] != int64(4) {
		t.Fatalf("stock after failed unit = %v, %v; want qty 4", s, err)
	}
	if err := orders.Get("o2", &s); !errors.Is(err, ErrNotFound) {
		t.Fatalf("o2 after failed unit: %v, want ErrNotFound", err)
	}

	// An op that fails its precondition also aborts the unit.
	err = r.Write(func(tx *Tx) error {
		tx.Put("orders", "o3", map[string]any{})
		return tx.Update("stock", "missing", func(*crdt.Doc) error { return nil })
	})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update = %v, want ErrNotFound", err)
	}
	if err := orders.Get("o3", &s); !errors.Is(err, ErrNotFound) {
		t.Fatal("o3 written by an aborted unit")
	}

	// An invalid name queued and ignored still fails the unit.
	err = r.Write(func(tx *Tx) error {
		tx.Put("orders", "o4", map[string]any{})
		tx.Put("bad name!", "x", map[string]any{})
		return nil
	})
	if !errors.Is(err, ErrInvalidName) {
		t.Fatalf("Update = %v, want ErrInvalidName", err)
	}
	if err := orders.Get("o4", &s); !errors.Is(err, ErrNotFound) {
		t.Fatal("o4 written by a unit with an invalid op")
	}

	// Create, update and delete of one record within one unit.
	err = r.Write(func(tx *Tx) error {
		tx.Create("orders", "o5", map[string]any{"n": 1})
		tx.Update("orders", "o5", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, 2) })
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := orders.Get("o5", &s); err != nil || s["n"] != int64(2) {
		t.Fatalf("o5 = %v %v", s, err)
	}
}

func TestInvalidNames(t *testing.T) {
	r := mem(t)
	for _, name := range []string{"", "has space", "-lead", "a/b", strings.Repeat("x", 65), "nul\x00"} {
		c := r.Collection(name)
		if err := c.Put("x", map[string]any{}); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Collection(%q).Put = %v, want ErrInvalidName", name, err)
		}
		if err := c.Get("x", &map[string]any{}); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Collection(%q).Get = %v, want ErrInvalidName", name, err)
		}
		for _, err := range c.Scan(ScanOptions{}) {
			if !errors.Is(err, ErrInvalidName) {
				t.Errorf("Collection(%q).Scan = %v, want ErrInvalidName", name, err)
			}
		}
	}
	c := coll(t, r, "ok")
	if err := c.Put("keep", map[string]any{"v": 1}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", strings.Repeat("x", 257), "bad\xff", "nul\x00x", "tab\t"} {
		if err := c.Put(id, map[string]any{}); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Put(%q) = %v, want ErrInvalidName", id, err)
		}
		var m map[string]any
		if err := c.Get(id, &m); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Get(%q) = %v, want ErrInvalidName", id, err)
		}
	}
	if err := c.Put("ünïcode ok", map[string]any{}); err != nil {
		t.Errorf("UTF-8 ID refused: %v", err)
	}
	var m map[string]any
	if err := c.Get("keep", &m); err != nil || m["v"] != int64(1) {
		t.Fatalf("stored record harmed: %v %v", m, err)
	}
}

func TestBadValueLeavesRecordIntact(t *testing.T) {
	r := mem(t)
	c := coll(t, r, "c")
	if err := c.Put("x", map[string]any{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if err := c.Put("x", map[string]any{"a": 2, "b": make(chan int)}); !errors.Is(err, crdt.ErrType) {
		t.Fatalf("Put(chan) = %v, want crdt.ErrType", err)
	}
	var m map[string]any
	if err := c.Get("x", &m); err != nil || m["a"] != int64(1) || len(m) != 1 {
		t.Fatalf("record after failed Put = %v, %v", m, err)
	}
}

func TestReopenKeepsDataAndID(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(dir, &Options{CompactAfter: 4})
	if err != nil {
		t.Fatal(err)
	}
	id := r.ID()
	c := coll(t, r, "c")
	for i := 0; i < 10; i++ { // past CompactAfter: snapshot plus chunks
		if err := c.Put("rec", map[string]any{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := c.Put("rec", map[string]any{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Put after Close = %v, want ErrClosed", err)
	}

	r2 := open(t, dir, nil)
	if r2.ID() != id {
		t.Fatalf("ID changed across reopen: %s -> %s", id, r2.ID())
	}
	var m map[string]any
	if err := coll(t, r2, "c").Get("rec", &m); err != nil || m["n"] != int64(9) {
		t.Fatalf("after reopen: %v %v", m, err)
	}
}

func TestCompactionFoldsChunks(t *testing.T) {
	r := open(t, t.TempDir(), &Options{CompactAfter: 5})
	c := coll(t, r, "c")
	for i := 0; i < 23; i++ {
		if err := c.Update2(t, "rec", i); err != nil {
			t.Fatal(err)
		}
		_, m, _ := r.cache.get(cacheKey("c", "rec"))
		if m.chunks >= 5 {
			t.Fatalf("after write %d: %d chunks, CompactAfter is 5", i, m.chunks)
		}
	}
	// Every write survives a cold load of snapshot plus chunks.
	r.cache.drop(cacheKey("c", "rec"))
	var m map[string]any
	if err := c.Get("rec", &m); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 23; i++ {
		if m[fmt.Sprint("f", i)] != int64(i) {
			t.Fatalf("field f%d = %v after compaction", i, m[fmt.Sprint("f", i)])
		}
	}
}

// Update2 writes field f<i>=i, creating the record on first use.
func (c *Collection) Update2(t *testing.T, id string, i int) error {
	return c.Put(id, map[string]any{fmt.Sprint("f", i): i})
}

func TestCacheIsBounded(t *testing.T) {
	const bound = 8 * docBaseBytes
	r := open(t, "", &Options{InMemory: true, CacheBytes: bound})
	c := coll(t, r, "c")
	for i := 0; i < 50; i++ {
		if err := c.Put(fmt.Sprint(i), map[string]any{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	if n, size := r.cache.len(), r.cache.size(); size > bound || n >= 8 {
		t.Fatalf("cache holds %d documents of %d bytes, bound is %d", n, size, bound)
	}
	for i := 0; i < 50; i++ {
		var m map[string]any
		if err := c.Get(fmt.Sprint(i), &m); err != nil || m["i"] != int64(i) {
			t.Fatalf("record %d = %v %v", i, m, err)
		}
	}
}

func TestNotAStore(t *testing.T) {
	dir := t.TempDir()
	precious := filepath.Join(dir, "thesis.txt")
	if err := os.WriteFile(precious, []byte("do not touch"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, nil); !errors.Is(err, ErrNotStore) {
		t.Fatalf("Open(non-store) = %v, want ErrNotStore", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("Open wrote into a foreign folder: %v", entries)
	}
	if b, _ := os.ReadFile(precious); string(b) != "do not touch" {
		t.Fatal("foreign file changed")
	}

	// A file where the folder should be.
	if _, err := Open(precious, nil); err == nil {
		t.Fatal("Open(file) succeeded")
	}
}

func TestNewerFormatRefused(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := coll(t, r, "c")
	if err := c.Put("keep", map[string]any{"v": 1}); err != nil {
		t.Fatal(err)
	}
	if err := r.db.Update(func(txn *badgerTxn) error {
		return txn.Set(keyFormat, []byte{0, 0, 0, formatVersion + 1})
	}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if _, err := Open(dir, nil); !errors.Is(err, ErrNewerFormat) {
		t.Fatalf("Open(newer) = %v, want ErrNewerFormat", err)
	}
	// Put it back: the data is untouched.
	db, err := openRaw(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *badgerTxn) error {
		return txn.Set(keyFormat, []byte{0, 0, 0, formatVersion})
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	r2 := open(t, dir, nil)
	var m map[string]any
	if err := coll(t, r2, "c").Get("keep", &m); err != nil || m["v"] != int64(1) {
		t.Fatalf("data after refused open: %v %v", m, err)
	}
}

func TestCrashDuringFirstOpenIsRepaired(t *testing.T) {
	// Badger killed between writing MANIFEST-REWRITE and renaming it.
	dir := t.TempDir()
	for _, f := range []string{"LOCK", "MANIFEST-REWRITE"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r := open(t, dir, nil)
	if err := coll(t, r, "c").Put("a", map[string]any{"v": 1}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	// An empty memtable file left by a crash (dgraph-io/badger#2207).
	if err := os.WriteFile(filepath.Join(dir, "00099.mem"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r2 := open(t, dir, nil)
	var m map[string]any
	if err := coll(t, r2, "c").Get("a", &m); err != nil || m["v"] != int64(1) {
		t.Fatalf("after repair: %v %v", m, err)
	}
}

func TestForeignBadgerStoreRefused(t *testing.T) {
	dir := t.TempDir()
	db, err := openRaw(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *badgerTxn) error { return txn.Set([]byte("theirs"), []byte("x")) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(dir, nil); !errors.Is(err, ErrNotStore) {
		t.Fatalf("Open(foreign badger) = %v, want ErrNotStore", err)
	}
}

func TestFeed(t *testing.T) {
	r := mem(t)
	c := coll(t, r, "c")
	f := c.Watch(16)
	defer f.Close()
	other := coll(t, r, "other").Watch(16)
	defer other.Close()

	c.Put("a", map[string]any{"v": 1})
	c.Put("a", map[string]any{"v": 2})
	c.Put("a", map[string]any{"v": 2}) // no change: no event
	c.Delete("a")
	c.Put("a", map[string]any{"v": 3})

	want := []EventKind{Created, Updated, Deleted, Created}
	for i, k := range want {
		ev := <-f.C
		if ev.Kind != k || ev.ID != "a" || ev.Origin != Local || ev.Collection != "c" {
			t.Fatalf("event %d = %+v, want %v", i, ev, k)
		}
	}
	select {
	case ev := <-f.C:
		t.Fatalf("unexpected event %+v", ev)
	case ev := <-other.C:
		t.Fatalf("other collection got %+v", ev)
	default:
	}

	// Remote imports are events too, with their origin.
	src := mem(t)
	sc := coll(t, src, "c")
	sc.Put("b", map[string]any{"v": 1})
	changes, _, _, err := sc.pendingChanges("b")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Import("b", changes); err != nil {
		t.Fatal(err)
	}
	if ev := <-f.C; ev.ID != "b" || ev.Origin != Remote || ev.Kind != Created {
		t.Fatalf("import event = %+v", ev)
	}
}

func TestFeedOverflowCutsOffSlowReader(t *testing.T) {
	r := mem(t)
	c := coll(t, r, "c")
	slow := c.Watch(2)
	fast := c.Watch(100)
	for i := 0; i < 5; i++ {
		if err := c.Put(fmt.Sprint(i), map[string]any{}); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for range slow.C {
		n++
	}
	if n != 2 || !errors.Is(slow.Err(), ErrFeedOverflow) {
		t.Fatalf("slow feed: %d events, err %v", n, slow.Err())
	}
	if len(fast.C) != 5 {
		t.Fatalf("fast feed holds %d events, want 5", len(fast.C))
	}
	r.Close()
	for range fast.C {
	}
	if !errors.Is(fast.Err(), ErrClosed) {
		t.Fatalf("feed after Close: %v", fast.Err())
	}
}

func TestPendingAndAcknowledge(t *testing.T) {
	r := mem(t)
	c := coll(t, r, "c")
	c.Put("a", map[string]any{"v": 1})
	c.Put("b", map[string]any{"v": 1})
	ids, _ := c.Pending()
	if strings.Join(ids, ",") != "a,b" {
		t.Fatalf("Pending = %v", ids)
	}
	changes, heads, acked, err := c.pendingChanges("a")
	if err != nil || len(changes) == 0 || acked != nil {
		t.Fatalf("PendingChanges = %d bytes, acked %v, %v", len(changes), acked, err)
	}
	if err := c.acknowledge("a", heads); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.PendingCount(); n != 1 {
		t.Fatalf("PendingCount = %d after ack, want 1", n)
	}
	if ch, _, _, _ := c.pendingChanges("a"); ch != nil {
		t.Fatalf("acknowledged record still has %d pending bytes", len(ch))
	}

	// A later edit makes it pending again, with only the new change.
	c.Put("a", map[string]any{"v": 2})
	changes2, heads2, acked2, _ := c.pendingChanges("a")
	if !acked2.Equal(heads) || len(changes2) == 0 {
		t.Fatalf("after new edit: acked %v, %d bytes", acked2, len(changes2))
	}
	dst := coll(t, mem(t), "c")
	if err := dst.Import("a", changes2); !errors.Is(err, crdt.ErrMissingDeps) {
		t.Fatalf("importing only the new change elsewhere = %v, want ErrMissingDeps", err)
	}
	// Acknowledging old heads does not clear newer changes.
	if err := c.acknowledge("a", heads); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.PendingCount(); n != 2 {
		t.Fatalf("PendingCount = %d, want 2", n)
	}
	c.acknowledge("a", heads2)
	if ids, _ := c.Pending(); strings.Join(ids, ",") != "b" {
		t.Fatalf("Pending = %v, want b", ids)
	}
	// Remote imports are not pending.
	src := coll(t, mem(t), "c")
	src.Put("z", map[string]any{"v": 1})
	zc, _, _, _ := src.pendingChanges("z")
	if err := c.Import("z", zc); err != nil {
		t.Fatal(err)
	}
	if ids, _ := c.Pending(); strings.Join(ids, ",") != "b" {
		t.Fatalf("Pending after import = %v, want b", ids)
	}
}

func TestImportRejectsCorruptChanges(t *testing.T) {
	src := coll(t, mem(t), "c")
	src.Put("a", map[string]any{"v": 1, "w": "x"})
	good, _, _, _ := src.pendingChanges("a")

	r := mem(t)
	c := coll(t, r, "c")
	c.Put("a", map[string]any{"mine": true})
	before, _ := c.Heads("a")
	for name, bad := range map[string][]byte{
		"truncated":      good[:len(good)-1],
		"trailing junk":  append(append([]byte{}, good...), 1, 2, 3),
		"random":         []byte("not automerge at all"),
		"msgpack bomb":   {0xdd, 0xff, 0xff, 0xff, 0xff},
		"flipped bit":    flip(good, len(good)-2),
		"header only":    good[:9],
		"declared huge":  append(append([]byte{}, good[:8]...), 1, 0xff, 0xff, 0xff, 0xff, 0x0f),
		"empty but junk": {0x85, 0x6f, 0x4a, 0x83},
	} {
		if err := c.Import("a", bad); !errors.Is(err, crdt.ErrCorrupt) {
			t.Errorf("%s: Import = %v, want crdt.ErrCorrupt", name, err)
		}
	}
	after, _ := c.Heads("a")
	var m map[string]any
	if err := c.Get("a", &m); err != nil || !after.Equal(before) || m["mine"] != true || len(m) != 1 {
		t.Fatalf("record changed by refused imports: %v %v", m, err)
	}
	if err := c.Import("a", good); err != nil {
		t.Fatal(err)
	}
	if err := c.Get("a", &m); err != nil || m["v"] != int64(1) || m["mine"] != true {
		t.Fatalf("after good import: %v %v", m, err)
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte{}, b...)
	c[i] ^= 0x40
	return c
}

func TestMaxRecordBytes(t *testing.T) {
	r := open(t, "", &Options{InMemory: true, MaxRecordBytes: 4096})
	c := coll(t, r, "c")
	if err := c.Put("a", map[string]any{"v": "small"}); err != nil {
		t.Fatal(err)
	}
	// Incompressible: the limit is on the saved (compressed) document.
	if err := c.Put("a", map[string]any{"v": noise(8000)}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized Put = %v, want ErrTooLarge", err)
	}
	var m map[string]any
	if err := c.Get("a", &m); err != nil || m["v"] != "small" {
		t.Fatalf("record after refused write: %v %v", m, err)
	}
}

func TestConcurrentUse(t *testing.T) {
	r := open(t, t.TempDir(), &Options{Relaxed: true, CacheBytes: 16 * docBaseBytes})
	c := coll(t, r, "c")
	feed := c.Watch(100000)
	defer feed.Close()
	const workers, per = 8, 40
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				// Shared records contend; private ones do not.
				shared := fmt.Sprint("shared-", i%4)
				err := r.Write(func(tx *Tx) error {
					tx.Put("c", fmt.Sprintf("w%d-%d", w, i), map[string]any{"w": w, "i": i})
					return tx.Put("c", shared, map[string]any{fmt.Sprint("w", w): i})
				})
				if err != nil {
					t.Error(err)
					return
				}
				if err := c.Update(shared, func(d *crdt.Doc) error { return d.Increment(crdt.Path{"hits"}, 1) }); err != nil {
					t.Error(err)
					return
				}
				var m map[string]any
				if err := c.Get(shared, &m); err != nil {
					t.Error(err)
					return
				}
				if _, err := collect(c.Scan(ScanOptions{Limit: 5})); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	hits := int64(0)
	for i := 0; i < 4; i++ {
		var m map[string]any
		if err := c.Get(fmt.Sprint("shared-", i), &m); err != nil {
			t.Fatal(err)
		}
		hits += m["hits"].(int64)
	}
	if hits != workers*per {
		t.Fatalf("counter hits = %d, want %d: an increment was lost", hits, workers*per)
	}
	recs, _ := collect(c.Scan(ScanOptions{Prefix: "w"}))
	if len(recs) != workers*per {
		t.Fatalf("%d private records, want %d", len(recs), workers*per)
	}
}

func TestCommitTimesComeFromClock(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	r := open(t, "", &Options{InMemory: true, Clock: func() time.Time { return at }})
	c := coll(t, r, "c")
	c.Put("a", map[string]any{"v": 1})
	changes, _, _, _ := c.pendingChanges("a")
	infos, err := crdt.ParseChanges(changes)
	if err != nil || len(infos) != 1 {
		t.Fatalf("one Put made %d changes (%v): edits must commit as one change", len(infos), err)
	}
}
