package crdt_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/memtest"
)

// costShapes are records of the shapes whose memory differs most per
// saved byte: many small objects, one field rewritten by many changes,
// many plain fields written at once, and one field rewritten with large
// values that compress to almost nothing (every value stays in the
// loaded document).
var costShapes = []struct {
	name   string
	copies int
	build  func(t testing.TB) []byte
}{
	{"objects", 8, objectHeavy},
	{"values", 8, func(t testing.TB) []byte {
		d := newDoc(t, actorA)
		for i := range 40 {
			set(t, d, crdt.Path{"blob"}, bytes.Repeat([]byte{byte(i)}, 64<<10))
			commit(t, d)
		}
		return d.Save()
	}},
	{"history", 8, func(t testing.TB) []byte {
		d := newDoc(t, actorA)
		for i := range 3000 {
			set(t, d, crdt.Path{fmt.Sprint("f", i%10)}, i)
			commit(t, d)
		}
		return d.Save()
	}},
	{"list", 8, func(t testing.TB) []byte {
		d := newDoc(t, actorA)
		vals := make([]any, 20000)
		for i := range vals {
			vals[i] = int64(i)
		}
		set(t, d, crdt.Path{"list"}, vals)
		commit(t, d)
		return d.Save()
	}},
	{"wide", 8, func(t testing.TB) []byte {
		d := newDoc(t, actorA)
		for i := range 20000 {
			set(t, d, crdt.Path{fmt.Sprint("field", i)}, fmt.Sprint("value ", i))
		}
		commit(t, d)
		return d.Save()
	}},
}

// objectHeavy returns a record of a list of small maps, each with a list
// of its own, written by 40 changes: about 50 KB saved.
func objectHeavy(t testing.TB) []byte {
	d := newDoc(t, actorA)
	n := 0
	for c := range 40 {
		items := make([]any, 0, 100)
		for range 100 {
			items = append(items, map[string]any{
				"id": int64(n), "title": fmt.Sprint("item ", n), "done": n%3 == 0,
				"tags": []any{"a", "b"},
			})
			n++
		}
		if c == 0 {
			set(t, d, crdt.Path{"items"}, items)
		} else if err := d.InsertAt(crdt.Path{"items"}, n-100, items...); err != nil {
			t.Fatal(err)
		}
		commit(t, d)
	}
	return d.Save()
}

// TestCostCalibration builds and loads copies of each shape of record in a
// process of its own (so that this one's allocators stay as they were),
// and compares the resident memory they take with what Doc.Cost
// estimates; it prints the measurements behind the constants in cost.go
// (go test -run TestCostCalibration -v ./crdt/). The estimate must stay
// within a factor of two of what was measured, either way. Under the race
// detector the process is a build without it (see memtest).
func TestCostCalibration(t *testing.T) {
	if shape := os.Getenv("FERRY_COST_CHILD"); shape != "" {
		costChild(t, shape)
		return
	}
	if testing.Short() {
		t.Skip("builds large records")
	}
	for _, sh := range costShapes {
		out := memtest.Run(t, "FERRY_COST_CHILD="+sh.name)
		var rss, est float64
		var saved int
		var c crdt.Cost
		i := bytes.Index(out, []byte("cost:"))
		if i < 0 {
			t.Fatalf("%s: no measurement in\n%s", sh.name, out)
		}
		line, _, _ := bytes.Cut(out[i:], []byte("\n"))
		if _, err := fmt.Sscanf(string(line), "cost: saved %d rss %g estimate %g changes %d ops %d keys %d objects %d",
			&saved, &rss, &est, &c.Changes, &c.Ops, &c.Keys, &c.Objects); err != nil {
			t.Fatalf("%s: %v in %q", sh.name, err, line)
		}
		t.Logf("%-8s saved %6d B: %5d changes %6d ops %5d keys %5d objects; resident %8.0f B per loaded copy, estimate %8.0f (%.2fx), %.0f B/op, %.0f x saved",
			sh.name, saved, c.Changes, c.Ops, c.Keys, c.Objects, rss, est, est/rss, rss/float64(c.Ops), rss/float64(saved))
		if est < rss/2 || est > rss*2 {
			t.Errorf("%s: Cost estimates %.0f bytes, the process took %.0f per copy", sh.name, est, rss)
		}
	}
}

// costChild builds a record of the named shape, loads copies of it,
// indexed as the relay's are, and prints the resident memory each took and
// Cost's estimate.
func costChild(t *testing.T, shape string) {
	var saved []byte
	copies := 0
	for _, sh := range costShapes {
		if sh.name == shape {
			saved, copies = sh.build(t), sh.copies
		}
	}
	if saved == nil {
		t.Fatalf("no shape %q", shape)
	}
	var err error
	// Building the record freed what its changes took, which the C
	// allocator keeps until it is trimmed: measured from there, the
	// copies would reuse it unseen. Measure from a trimmed baseline; the
	// end stays untrimmed, as a process holding documents runs (what
	// loading and indexing leave to the allocator is part of what a
	// loaded document costs).
	runtime.GC()
	crdt.ReleaseNative()
	before := memtest.Resident(t)
	docs := make([]*crdt.Doc, copies)
	var c crdt.Cost
	for i := range docs {
		if docs[i], err = crdt.Load(saved, ""); err != nil {
			t.Fatal(err)
		}
		if c, err = docs[i].Cost(); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	grown := float64(memtest.Resident(t)-before) / float64(copies)
	fmt.Printf("cost: saved %d rss %.0f estimate %d changes %d ops %d keys %d objects %d\n", len(saved), grown, c.Bytes, c.Changes, c.Ops, c.Keys, c.Objects)
	runtime.KeepAlive(docs)
}

// TestCostCounts checks what Cost counts on a record built by hand, and
// that it follows imported changes.
func TestCostCounts(t *testing.T) {
	d := newDoc(t, actorA)
	set(t, d, crdt.Path{"a"}, 1)
	set(t, d, crdt.Path{"m"}, map[string]any{"x": "y"})
	commit(t, d)
	set(t, d, crdt.Path{"a"}, 2)
	commit(t, d)
	c, err := d.Cost()
	if err != nil {
		t.Fatal(err)
	}
	// a=1, make m, m.x, then a=2 (over a=1: not a new key).
	want := crdt.Cost{Changes: 2, Ops: 4, Keys: 3, Objects: 1}
	if got := c; got.Changes != want.Changes || got.Ops != want.Ops || got.Keys != want.Keys || got.Objects != want.Objects {
		t.Fatalf("Cost = %+v, want %+v", got, want)
	}
	if c.Bytes <= 0 {
		t.Fatalf("Cost.Bytes = %d", c.Bytes)
	}

	src := fork(t, d, actorB)
	if err := src.InsertAt(crdt.Path{"l"}, 0, 1, 2, 3); err != nil {
		t.Fatal(err)
	}
	commit(t, src)
	if _, err := d.Import(crdt.LastChange(src)); err != nil {
		t.Fatal(err)
	}
	after, err := d.Cost()
	if err != nil {
		t.Fatal(err)
	}
	if after.Changes != 3 || after.Ops != 8 || after.Objects != 2 || after.Bytes <= c.Bytes {
		t.Fatalf("after importing a list of 3: Cost = %+v, before %+v", after, c)
	}
	loaded, err := crdt.Load(d.Save(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer loaded.Free()
	re, err := loaded.Cost()
	if err != nil {
		t.Fatal(err)
	}
	if re.Changes != after.Changes || re.Ops != after.Ops || re.Keys != after.Keys || re.Objects != after.Objects {
		t.Fatalf("reloaded: Cost = %+v, before saving %+v", re, after)
	}
}

// TestMaxOps checks the operation limit right at its bound: a change that
// brings the document to the limit is imported, one operation more is
// refused before anything is applied, on a loaded (unindexed) document as
// on one already indexed.
func TestMaxOps(t *testing.T) {
	d := newDoc(t, actorA)
	set(t, d, crdt.Path{"a"}, 1)
	set(t, d, crdt.Path{"b"}, 2)
	commit(t, d)
	src := fork(t, d, actorB)
	if err := src.InsertAt(crdt.Path{"l"}, 0, 1, 2, 3); err != nil {
		t.Fatal(err)
	}
	commit(t, src)
	change := crdt.LastChange(src) // 4 operations: the list and 3 inserts
	for _, indexed := range []bool{false, true} {
		for _, limit := range []int{6, 5} {
			doc, err := crdt.Load(d.Save(), "")
			if err != nil {
				t.Fatal(err)
			}
			if indexed {
				if _, err := doc.Cost(); err != nil {
					t.Fatal(err)
				}
			}
			doc.SetMaxOps(limit)
			before := doc.Heads()
			n, err := doc.Import(change)
			switch {
			case limit == 6 && (err != nil || n != 1):
				t.Errorf("indexed %v, limit %d: Import = %d, %v; want the change in", indexed, limit, n, err)
			case limit == 5 && !errors.Is(err, crdt.ErrOpLimit):
				t.Errorf("indexed %v, limit %d: Import = %d, %v; want ErrOpLimit", indexed, limit, n, err)
			case limit == 5 && !doc.Heads().Equal(before):
				t.Errorf("indexed %v: a refused change moved the heads", indexed)
			}
			if c, err := doc.Cost(); err != nil || c.Ops != 2+4*n {
				t.Errorf("indexed %v, limit %d: Cost = %+v, %v after importing %d", indexed, limit, c, err, n)
			}
			doc.Free()
		}
	}
}

// TestWholeDocumentWithinBudgets: a saved document framed within a budget
// is charged for every compressed column (its 2 MiB string too, which
// framing need not read but loading inflates), one holding more
// operations than a document's limit is refused before it is loaded, and
// its values count against the limit as operations (a 2 MiB string costs
// 2 MiB loaded, however well it compresses).
func TestWholeDocumentWithinBudgets(t *testing.T) {
	d := newDoc(t, actorA)
	set(t, d, crdt.Path{"blob"}, strings.Repeat("x", 2<<20))
	vals := make([]any, 1000)
	for i := range vals {
		vals[i] = int64(1)
	}
	set(t, d, crdt.Path{"list"}, vals)
	commit(t, d)
	saved := d.Save()
	d.Free()
	if _, err := crdt.ParseChangesWithin(saved, crdt.NewInflateBudget(1<<20)); !errors.Is(err, crdt.ErrInflateLimit) {
		t.Fatalf("a %d-byte document inflating past 2 MiB, framed within 1 MiB: %v", len(saved), err)
	}
	if _, err := crdt.ParseChangesWithin(saved, crdt.NewInflateBudget(4<<20)); err != nil {
		t.Fatalf("within 4 MiB: %v", err)
	}

	// The blob, the list, its 1,000 elements; and the values: the blob's
	// 2 MiB and the elements' byte each.
	full := 1002 + (2<<20+1000)/crdt.ValueBytesPerOp
	for _, limit := range []int{full, full - 1, 1001} {
		into := newDoc(t, "")
		into.SetMaxOps(limit)
		n, err := into.Import(saved)
		switch {
		case limit == full && (err != nil || n != 1):
			t.Errorf("limit %d: Import = %d, %v", limit, n, err)
		case limit == full-1 && (!errors.Is(err, crdt.ErrOpLimit) || !strings.Contains(err.Error(), "values counted")):
			t.Errorf("limit %d: Import = %d, %v; want ErrOpLimit for the values", limit, n, err)
		case limit == full-1 && len(into.Heads()) != 0:
			t.Errorf("limit %d: the refused document was applied", limit)
		case limit == 1001 && (!errors.Is(err, crdt.ErrOpLimit) || !strings.Contains(err.Error(), "whole document of 1002 operations")):
			t.Errorf("limit %d: Import = %d, %v; want ErrOpLimit for the whole document", limit, n, err)
		case limit == 1001 && len(into.Heads()) != 0:
			t.Errorf("limit %d: the refused document was applied", limit)
		}
		into.Free()
	}
}

// TestCostFollowsImports imports random changes one at a time, so that
// the index's layers merge again and again, and checks after each that
// what Cost counts equals what a fresh index of the same history counts:
// the counts kept per layer neither leak nor go negative as layers merge.
func TestCostFollowsImports(t *testing.T) {
	const seed = 19
	rng := rand.New(rand.NewPCG(seed, seed))
	t.Logf("seed %d", seed)
	src := newDoc(t, actorA)
	dst := newDoc(t, "")
	defer src.Free()
	defer dst.Free()
	var last crdt.Cost
	for step := range 300 {
		switch rng.IntN(4) {
		case 0:
			set(t, src, crdt.Path{fmt.Sprint("f", rng.IntN(20))}, rng.Int64())
		case 1:
			set(t, src, crdt.Path{fmt.Sprint("m", rng.IntN(5)), fmt.Sprint("k", rng.IntN(5))}, "v")
		case 2:
			if err := src.InsertAt(crdt.Path{"l"}, 0, rng.Int64(), map[string]any{"x": int64(1)}); err != nil {
				t.Fatal(err)
			}
		case 3:
			if err := src.Delete(crdt.Path{fmt.Sprint("f", rng.IntN(20))}); err != nil && !errors.Is(err, crdt.ErrPath) {
				t.Fatal(err)
			}
		}
		if ok, err := src.Commit("", epoch); err != nil || !ok {
			continue
		}
		if _, err := dst.Import(crdt.LastChange(src)); err != nil {
			t.Fatalf("seed %d, step %d: %v", seed, step, err)
		}
		got, err := dst.Cost()
		if err != nil {
			t.Fatal(err)
		}
		if got.Changes != last.Changes+1 || got.Ops <= last.Ops || got.Bytes <= 0 || got.Keys < 0 || got.Objects < 0 {
			t.Fatalf("seed %d, step %d: Cost went from %+v to %+v on one change", seed, step, last, got)
		}
		last = got
		if step%50 != 49 {
			continue
		}
		fresh, err := crdt.Load(dst.Save(), "")
		if err != nil {
			t.Fatal(err)
		}
		want, err := fresh.Cost()
		fresh.Free()
		if err != nil {
			t.Fatal(err)
		}
		if got.Changes != want.Changes || got.Ops != want.Ops || got.Keys != want.Keys || got.Objects != want.Objects {
			t.Fatalf("seed %d, step %d: Cost %+v after imports, %+v indexed afresh", seed, step, got, want)
		}
	}
}

// TestValuesCountAgainstOpLimit: a record's values count against its
// operation limit, ValueBytesPerOp bytes to an operation, however small
// the changes that carry them: changes of one operation each, setting a
// 512 KiB value that compresses to a few hundred bytes, are taken while
// the record's operations and values fit the limit and refused once the
// next would pass it, by a deferred document (as the relay checks pushes)
// and a loaded one alike. Counted by operations alone, as they were, a
// thousand such changes would have fit a limit of 2,000: half a gigabyte
// once loaded. Cost counts the values too.
func TestValuesCountAgainstOpLimit(t *testing.T) {
	const value = 512 << 10
	perChange := 1 + (value+3)/crdt.ValueBytesPerOp // the operation, and its value with its length
	src := newDoc(t, actorA)
	defer src.Free()
	var changes [][]byte
	for i := range 3 {
		before := src.Heads()
		set(t, src, crdt.Path{fmt.Sprint("blob", i)}, bytes.Repeat([]byte{'x'}, value))
		commit(t, src)
		ch, err := src.ChangesSince(before)
		if err != nil {
			t.Fatal(err)
		}
		changes = append(changes, ch)
	}
	limit := 2*perChange + perChange/2
	for _, deferred := range []bool{true, false} {
		d := crdt.NewDeferred()
		if !deferred {
			d = newDoc(t, "")
		}
		d.SetMaxOps(limit)
		for i, ch := range changes {
			f, err := crdt.FrameChanges(ch, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, err = d.ImportFramed(f)
			switch {
			case i < 2 && err != nil:
				t.Fatalf("deferred %v: change %d of %d operations' worth, limit %d: %v", deferred, i, perChange, limit, err)
			case i == 2 && !errors.Is(err, crdt.ErrOpLimit):
				t.Fatalf("deferred %v: a third change of a 512 KiB value under a limit of %d: %v, want ErrOpLimit", deferred, limit, err)
			}
		}
		c, err := d.Cost()
		if err != nil {
			t.Fatal(err)
		}
		if c.Ops != 2 || c.Values < 2*value || c.Bytes < 2*value {
			t.Errorf("deferred %v: Cost %+v after two changes of a 512 KiB value each", deferred, c)
		}
		d.Free()
	}
}
