package replica

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
)

// checkViews asserts that every record of coll on r has a read model equal
// to its document: the same heads, deletion and fields, kinds kept. It
// reads the document from the store, not the cache.
func checkViews(t *testing.T, r *Replica, coll string) error {
	t.Helper()
	ids, err := r.recordIDs(coll)
	if err != nil {
		return err
	}
	// No read model outlives its record.
	err = r.db.View(func(txn *badger.Txn) error {
		prefix := collPrefix('v', coll)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			id := string(it.Item().Key()[len(prefix):])
			if _, ok, err := readMeta(txn, coll, id); err != nil || !ok {
				return fmt.Errorf("%s/%s: a read model without its record (%v)", coll, id, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := checkIndexes(r, coll); err != nil {
		return err
	}
	for _, id := range ids {
		key := cacheKey(coll, id)
		unlock := r.locks.lockAll([]string{key})
		err := r.db.View(func(txn *badger.Txn) error {
			v, ok, err := readView(txn, coll, id)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%s/%s has no read model", coll, id)
			}
			r.cache.drop(key)
			d, m, _, err := r.loadDoc(txn, coll, id)
			if err != nil {
				return err
			}
			want, err := d.PackedFields()
			if err != nil {
				return err
			}
			if !v.heads.Equal(m.heads) || v.deleted != m.deleted || !bytes.Equal(v.packed, want) {
				got, _ := crdt.UnpackFields(v.packed, true)
				doc, _ := d.TypedFields()
				return fmt.Errorf("%s/%s: read model %v deleted=%v %v, document %v deleted=%v %v",
					coll, id, v.heads, v.deleted, got, m.heads, m.deleted, doc)
			}
			return nil
		})
		unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// viewRandomStarts are the random starting points of the read model's
// property test: the one in FERRY_VIEW_SEED (to replay a failure), else
// fixed ones and one from the clock.
func viewRandomStarts(t *testing.T) []uint64 {
	if seed, ok := envSeed(t, "FERRY_VIEW_SEED"); ok {
		return []uint64{seed}
	}
	// 1796611309560136971 refreshes a device from the relay after another
	// imported its changes (see refresh.go).
	return []uint64{1, 2, 3, 1796611309560136971, uint64(time.Now().UnixNano())}
}

// TestReadModelMatchesDocument makes random edits of every kind (text,
// counters, nested maps, lists, times, bytes; deletes, restores, units of
// work, imports) on three devices, and syncs them at random with every
// sync type (two-way with conflicts resolved by each policy, slow,
// one-way, and refreshes from either side), reopening one device's store
// now and then. After every step each record's read model must equal its
// document.
func TestReadModelMatchesDocument(t *testing.T) {
	for _, seed := range viewRandomStarts(t) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Logf("seed %d (replay with FERRY_VIEW_SEED=%d)", seed, seed)
			readModelRun(t, seed, 40)
		})
	}
}

func readModelRun(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 7))
	e := newSyncEnv(t)
	dir := t.TempDir()
	var devs []*Replica
	var trace []string
	fail := func(format string, args ...any) {
		t.Helper()
		tail := trace[max(0, len(trace)-30):]
		t.Fatalf("seed %d (FERRY_VIEW_SEED=%d): %s\nlast ops:\n%v", seed, seed, fmt.Sprintf(format, args...), tail)
	}
	openDisk := func() *Replica {
		r, err := Open(dir, &Options{MergeHook: maxHook, TokenSource: StaticToken(e.token), Relaxed: true, GCInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Profile("p"); errors.Is(err, ErrNoProfile) {
			if err := r.AddProfile(e.profile("p", "c")); err != nil {
				t.Fatal(err)
			}
		}
		return r
	}
	devs = append(devs, openDisk())
	t.Cleanup(func() { devs[0].Close() })
	devs = append(devs, e.device(&Options{MergeHook: maxHook}, "c"), e.device(&Options{MergeHook: maxHook}, "c"))
	for i, pol := range []policy.Policy{policy.PreferLocal, policy.PreferCloud, policy.Custom} {
		setProfilePolicy(t, devs[i], pol)
		if err := devs[i].Collection("c").EnsureIndex("by_cat", IndexOptions{Fields: []string{"cat", "price"}}); err != nil {
			t.Fatal(err)
		}
		if err := devs[i].Collection("c").EnsureIndex("by_notes", IndexOptions{Fields: []string{"notes"}}); err != nil {
			t.Fatal(err)
		}
	}
	types := []policy.Type{policy.TwoWay, policy.TwoWay, policy.TwoWay, policy.Slow, policy.OneWayFromClient,
		policy.OneWayFromServer, policy.RefreshFromServer, policy.RefreshFromClient}
	for step := range steps {
		for i, r := range devs {
			for range 1 + rng.IntN(3) {
				desc, err := viewOp(rng, r, devs)
				trace = append(trace, fmt.Sprintf("%03d dev%d %s: %v", step, i, desc, err))
			}
		}
		i := rng.IntN(len(devs))
		typ := types[rng.IntN(len(types))]
		p, err := devs[i].Profile("p")
		if err != nil {
			t.Fatal(err)
		}
		p.Type = typ
		if err := devs[i].UpdateProfile(p); err != nil {
			t.Fatal(err)
		}
		st, err := devs[i].Sync(context.Background(), "p")
		trace = append(trace, fmt.Sprintf("%03d dev%d sync %s: %v", step, i, typ, err))
		if err != nil {
			fail("sync: %v (%+v)", err, st)
		}
		if rng.IntN(8) == 0 {
			if err := devs[0].Close(); err != nil {
				t.Fatal(err)
			}
			devs[0] = openDisk()
			trace = append(trace, fmt.Sprintf("%03d dev0 reopened", step))
		}
		for j, r := range devs {
			if err := checkViews(t, r, "c"); err != nil {
				fail("dev%d: %v", j, err)
			}
		}
	}
}

var viewNames = []string{"tea", "coffee", "mate", "cocoa", "chai"}

// viewOp makes one random local edit on r, or imports a record from one
// of others (which a refresh may later discard there).
func viewOp(rng *rand.Rand, r *Replica, others []*Replica) (string, error) {
	c := r.Collection("c")
	id := fmt.Sprintf("r%d", rng.IntN(6))
	name := viewNames[rng.IntN(len(viewNames))]
	switch rng.IntN(12) {
	case 0:
		return "put " + id, c.Put(id, map[string]any{
			"name": name, "price": rng.Float64() * 10, "qty": int64(rng.IntN(100) - 50), "cat": fmt.Sprintf("c%d", rng.IntN(3)),
			"when": time.UnixMilli(rng.Int64N(1 << 41)), "blob": []byte(name), "big": uint64(rng.Uint64()),
			"ok": rng.IntN(2) == 0, "none": nil,
		})
	case 1:
		return "put text and counter " + id, c.Put(id, map[string]any{"notes": crdt.Text(name), "stock": crdt.Counter(rng.IntN(10))})
	case 2:
		return "splice " + id, c.Update(id, func(d *crdt.Doc) error {
			v, _, err := d.Lookup(crdt.Path{"notes"})
			if err != nil {
				return nil
			}
			s, _ := v.(string)
			n := utf8.RuneCountInString(s)
			pos := rng.IntN(n + 1)
			if d.SpliceText(crdt.Path{"notes"}, pos, min(rng.IntN(3), n-pos), name[:2]) != nil {
				return nil // not text here: nothing to do
			}
			return nil
		})
	case 3:
		return "increment " + id, c.Update(id, func(d *crdt.Doc) error {
			_ = d.Increment(crdt.Path{"stock"}, int64(rng.IntN(7)-3))
			return nil
		})
	case 4:
		return "nested " + id, c.Update(id, func(d *crdt.Doc) error {
			return d.Set(crdt.Path{"addr"}, map[string]any{"city": name, "geo": []any{rng.Float64(), int64(rng.IntN(9))}})
		})
	case 5:
		return "list " + id, c.Update(id, func(d *crdt.Doc) error {
			v, _, _ := d.Lookup(crdt.Path{"tags"})
			l, _ := v.([]any)
			_ = d.InsertAt(crdt.Path{"tags"}, rng.IntN(len(l)+1), name)
			return nil
		})
	case 6:
		return "delete field " + id, c.Update(id, func(d *crdt.Doc) error { return d.Delete(crdt.Path{"price"}) })
	case 7, 8:
		return "delete " + id, c.Delete(id)
	case 9:
		return "restore " + id, c.Put(id, map[string]any{"restored": true})
	case 10:
		id2 := fmt.Sprintf("r%d", rng.IntN(6))
		return "unit " + id + " " + id2, r.Write(func(tx *Tx) error {
			if err := tx.Put("c", id, map[string]any{"cat": "unit"}); err != nil {
				return err
			}
			if err := tx.Update("c", id2, func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, int64(1)) }); err != nil {
				return err
			}
			return tx.Delete("c", id)
		})
	default:
		from := others[rng.IntN(len(others))].Collection("c")
		doc, _, err := from.Export(id)
		if err != nil {
			return "import " + id, err
		}
		return "import " + id, c.Import(id, doc)
	}
}

// A store written before read models (format 1) opens: each record's
// read model is built from its document, then its format is upgraded. A
// damaged or lost read model is rebuilt from the document when read,
// never read as other fields.
func TestReadModelRebuilt(t *testing.T) {
	dir := t.TempDir()
	r := open(t, dir, &Options{GCInterval: -1})
	c := r.Collection("c")
	want := map[string]map[string]any{}
	for i := range 600 { // past a scan page
		id := fmt.Sprintf("r%03d", i)
		f := map[string]any{"n": int64(i), "notes": crdt.Text("t"), "stock": crdt.Counter(i)}
		if err := c.Put(id, f); err != nil {
			t.Fatal(err)
		}
		want[id] = map[string]any{"n": int64(i), "notes": "t", "stock": int64(i)}
	}
	if err := c.Delete("r007"); err != nil {
		t.Fatal(err)
	}
	delete(want, "r007")
	r.Close()

	// Make it a store of format 1: no read models.
	db, err := openRaw(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error {
		for id := range want {
			if err := txn.Delete(recKey('v', "c", id)); err != nil {
				return err
			}
		}
		if err := txn.Delete(recKey('v', "c", "r007")); err != nil {
			return err
		}
		return txn.Set(keyFormat, binary.BigEndian.AppendUint32(nil, 1))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	r = open(t, dir, &Options{GCInterval: -1})
	c = r.Collection("c")
	if err := checkViews(t, r, "c"); err != nil {
		t.Fatalf("after opening a store of format 1: %v", err)
	}
	if err := r.db.View(func(txn *badger.Txn) error {
		v, _, _ := getKey(txn, keyFormat)
		if binary.BigEndian.Uint32(v) != formatVersion {
			t.Errorf("format %x after opening, want %d", v, formatVersion)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := c.Get("r001", &m); err != nil || !reflect.DeepEqual(m, want["r001"]) {
		t.Fatalf("Get(r001) = %v, %v; want %v", m, err, want["r001"])
	}
	if err := c.Get("r007", &m); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(deleted r007) = %v, want ErrNotFound", err)
	}
	recs, err := collect(c.Scan(ScanOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(want) {
		t.Fatalf("Scan listed %d records, want %d", len(recs), len(want))
	}
	for _, rec := range recs {
		if !reflect.DeepEqual(rec.Fields, want[rec.ID]) {
			t.Fatalf("Scan: %s = %v, want %v", rec.ID, rec.Fields, want[rec.ID])
		}
	}
	if err := checkViews(t, r, "c"); err != nil {
		t.Fatalf("after the reads: %v", err)
	}

	// Damage one read model (a byte flipped, as Badger would not notice
	// in a value it stores whole) and lose another.
	if err := r.db.Update(func(txn *badger.Txn) error {
		v, _, _ := getKey(txn, recKey('v', "c", "r002"))
		v[len(v)/2] ^= 0x40
		if err := txn.Set(recKey('v', "c", "r002"), v); err != nil {
			return err
		}
		return txn.Delete(recKey('v', "c", "r003"))
	}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"r002", "r003"} {
		if err := c.Get(id, &m); err != nil || !reflect.DeepEqual(m, want[id]) {
			t.Fatalf("Get(%s) with a damaged read model = %v, %v; want %v", id, m, err, want[id])
		}
	}
	if err := r.db.Update(func(txn *badger.Txn) error {
		v, _, _ := getKey(txn, recKey('v', "c", "r004"))
		v[len(v)-1] ^= 1
		return txn.Set(recKey('v', "c", "r004"), v)
	}); err != nil {
		t.Fatal(err)
	}
	recs, err = collect(c.Scan(ScanOptions{Prefix: "r00"}))
	if err != nil || len(recs) != 9 {
		t.Fatalf("Scan(r00) = %d records, %v; want 9", len(recs), err)
	}
	for _, rec := range recs {
		if !reflect.DeepEqual(rec.Fields, want[rec.ID]) {
			t.Fatalf("Scan: %s = %v, want %v", rec.ID, rec.Fields, want[rec.ID])
		}
	}
	if err := checkViews(t, r, "c"); err != nil {
		t.Fatalf("after rebuilding: %v", err)
	}
}

// Get, Scan and Heads read the read model alone: after a reopen, none
// loads a document (every document loaded is cached, and the cache stays
// empty) until a write needs one.
func TestReadsLoadNoDocument(t *testing.T) {
	dir := t.TempDir()
	r := open(t, dir, &Options{GCInterval: -1, Relaxed: true})
	c := r.Collection("c")
	for i := range 20 {
		if err := c.Put(fmt.Sprintf("r%02d", i), map[string]any{"n": i, "notes": crdt.Text("x")}); err != nil {
			t.Fatal(err)
		}
	}
	r.Close()
	r = open(t, dir, &Options{GCInterval: -1, Relaxed: true})
	c = r.Collection("c")
	var m map[string]any
	for i := range 20 {
		if err := c.Get(fmt.Sprintf("r%02d", i), &m); err != nil || m["n"] != int64(i) {
			t.Fatalf("Get = %v, %v", m, err)
		}
	}
	if _, err := c.Heads("r01"); err != nil {
		t.Fatal(err)
	}
	if recs, err := collect(c.Scan(ScanOptions{})); err != nil || len(recs) != 20 {
		t.Fatalf("Scan = %d, %v", len(recs), err)
	}
	if n := r.cache.len(); n != 0 {
		t.Fatalf("%d documents loaded by reads, want 0", n)
	}
	if err := c.Update("r01", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, 100) }); err != nil {
		t.Fatal(err)
	}
	if n := r.cache.len(); n != 1 {
		t.Fatalf("%d documents loaded after one edit, want 1", n)
	}
	if err := c.Get("r01", &m); err != nil || m["n"] != int64(100) {
		t.Fatalf("Get after the edit = %v, %v", m, err)
	}
}

// checkIndexes asserts that each index of coll on r holds exactly the
// entries of the records' read models: one per live record, none else.
func checkIndexes(r *Replica, coll string) error {
	r.idx.mu.RLock()
	defs := r.idx.of(coll)
	r.idx.mu.RUnlock()
	return r.db.View(func(txn *badger.Txn) error {
		for _, d := range defs {
			want := map[string]bool{}
			prefix := collPrefix('v', coll)
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
			for it.Rewind(); it.Valid(); it.Next() {
				id := string(it.Item().Key()[len(prefix):])
				b, _ := it.Item().ValueCopy(nil)
				v, err := decodeView(b)
				if err != nil || v.deleted {
					continue
				}
				f, err := crdt.UnpackFields(v.packed, false)
				if err != nil {
					it.Close()
					return err
				}
				want[string(indexEntry(coll, d, f, id))] = true
			}
			it.Close()
			it = txn.NewIterator(badger.IteratorOptions{Prefix: indexPrefix(coll, d.Name)})
			n := 0
			for it.Rewind(); it.Valid(); it.Next() {
				n++
				if k := it.Item().Key(); !want[string(k)] {
					it.Close()
					return fmt.Errorf("index %s: stray entry %q", d.Name, k)
				}
			}
			it.Close()
			if n != len(want) {
				return fmt.Errorf("index %s: %d entries, want %d", d.Name, n, len(want))
			}
		}
		return nil
	})
}

// An acknowledgement reads the records' heads from their meta and loads no
// document: loading each inside the one write transaction cost more than
// the push it acknowledged (a Badger iterator per record, each sorting the
// transaction's pending writes).
func TestAcknowledgeLoadsNoDocument(t *testing.T) {
	r := open(t, "", &Options{InMemory: true, GCInterval: -1})
	c := r.Collection("c")
	var batch []outgoing
	for i := range 20 {
		id := fmt.Sprintf("r%02d", i)
		if err := c.Put(id, map[string]any{"n": i}); err != nil {
			t.Fatal(err)
		}
		h, err := c.Heads(id)
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, outgoing{id: id, heads: h})
	}
	// One record changes after its push: it stays pending.
	if err := c.Update("r00", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, 100) }); err != nil {
		t.Fatal(err)
	}
	r.cache.clear()
	if err := r.acknowledge("c", batch, false); err != nil {
		t.Fatal(err)
	}
	if n := r.cache.len(); n != 0 {
		t.Fatalf("%d documents loaded by an acknowledgement, want 0", n)
	}
	if pending, err := c.Pending(); err != nil || len(pending) != 1 || pending[0] != "r00" {
		t.Fatalf("pending after the acknowledgement: %v, %v; want only r00", pending, err)
	}
}
