package crdt_test

import (
	"errors"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

func TestSetGetScalars(t *testing.T) {
	d := newDoc(t, actorA)
	when := time.Date(2024, 3, 1, 12, 30, 0, 123_456_789, time.FixedZone("x", 3600))
	cases := []struct {
		key  string
		in   any
		want any
	}{
		{"s", "héllo", "héllo"},
		{"i", 42, int64(42)},
		{"i8", int8(-3), int64(-3)},
		{"u", uint16(7), uint64(7)},
		{"big", uint64(math.MaxUint64), uint64(math.MaxUint64)},
		{"f", 2.5, 2.5},
		{"f32", float32(0.5), 0.5},
		{"inf", math.Inf(1), math.Inf(1)},
		{"b", true, true},
		{"bytes", []byte{0, 1, 2}, []byte{0, 1, 2}},
		{"empty", []byte{}, []byte{}},
		{"time", when, when.UTC().Truncate(time.Millisecond)},
		{"nil", nil, nil},
	}
	for _, c := range cases {
		set(t, d, crdt.Path{c.key}, c.in)
	}
	commit(t, d)
	for _, c := range cases {
		got, ok, err := d.Lookup(crdt.Path{c.key})
		if err != nil || !ok {
			t.Fatalf("Lookup(%q) = %v, %v, %v", c.key, got, ok, err)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("Get(%q) = %#v, want %#v", c.key, got, c.want)
		}
	}
	// Survives a save and load.
	l, err := crdt.Load(d.Save(), actorB)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fields(t, l), fields(t, d); !reflect.DeepEqual(got, want) {
		t.Errorf("after Load: %#v, want %#v", got, want)
	}
}

func TestLookupMissingAndDelete(t *testing.T) {
	d := newDoc(t, actorA)
	if v, ok, err := d.Lookup(crdt.Path{"nope"}); v != nil || ok || err != nil {
		t.Fatalf("Lookup(missing) = %v, %v, %v; want nil, false, nil", v, ok, err)
	}
	if v, ok, err := d.Lookup(crdt.Path{"nope", "deeper", 3}); v != nil || ok || err != nil {
		t.Fatalf("Lookup(missing nested) = %v, %v, %v", v, ok, err)
	}
	set(t, d, crdt.Path{"x"}, "1")
	set(t, d, crdt.Path{"nil"}, nil)
	commit(t, d)
	if _, ok, _ := d.Lookup(crdt.Path{"nil"}); !ok {
		t.Error("a field holding nil should exist")
	}
	if err := d.Delete(crdt.Path{"x"}); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	if _, ok, _ := d.Lookup(crdt.Path{"x"}); ok {
		t.Error("x still exists after Delete")
	}
	// Deleting what is not there changes nothing.
	if err := d.Delete(crdt.Path{"x"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(crdt.Path{"no", "such", "parent"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := d.Commit("", epoch); ok || err != nil {
		t.Errorf("Commit after deleting missing keys = %v, %v; want false, nil", ok, err)
	}
}

func TestCommitNothing(t *testing.T) {
	d := newDoc(t, actorA)
	if ok, err := d.Commit("empty", epoch); ok || err != nil {
		t.Fatalf("Commit on a new doc = %v, %v", ok, err)
	}
	set(t, d, crdt.Path{"a"}, 1)
	if ok, err := d.Commit("one", epoch); !ok || err != nil {
		t.Fatalf("Commit after Set = %v, %v; want true", ok, err)
	}
	if len(d.Heads()) != 1 {
		t.Fatalf("heads = %v", d.Heads())
	}
	if ok, err := d.Commit("again", epoch); ok || err != nil {
		t.Fatalf("second Commit = %v, %v; want false", ok, err)
	}
	// Writing the same value again is not a change.
	set(t, d, crdt.Path{"a"}, 1)
	if ok, err := d.Commit("same", epoch); ok || err != nil {
		t.Fatalf("Commit after rewriting the same value = %v, %v; want false", ok, err)
	}
	// An int64 is not silently rewritten as the equal float64, nor the reverse.
	set(t, d, crdt.Path{"a"}, 1.0)
	commit(t, d)
	if got := get(t, d, "a"); got != 1.0 {
		t.Fatalf("a = %#v, want float64 1", got)
	}
}

func TestNested(t *testing.T) {
	d := newDoc(t, actorA)
	set(t, d, crdt.Path{"address", "city"}, "Oslo")
	set(t, d, crdt.Path{"address", "geo", "lat"}, 59.9)
	commit(t, d)
	if got := get(t, d, "address", "city"); got != "Oslo" {
		t.Fatalf("city = %#v", got)
	}
	want := map[string]any{"city": "Oslo", "geo": map[string]any{"lat": 59.9}}
	if got := get(t, d, "address"); !reflect.DeepEqual(got, want) {
		t.Fatalf("address = %#v, want %#v", got, want)
	}
	if err := d.Delete(crdt.Path{"address", "geo", "lat"}); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	if got := get(t, d, "address", "geo"); !reflect.DeepEqual(got, map[string]any{}) {
		t.Fatalf("geo after delete = %#v", got)
	}
	// A path through a scalar is not a path.
	if err := d.Set(crdt.Path{"address", "city", "x"}, 1); !errors.Is(err, crdt.ErrPath) {
		t.Errorf("Set through a string: %v, want ErrPath", err)
	}
	if err := d.Delete(crdt.Path{"address", "city", "x"}); !errors.Is(err, crdt.ErrPath) {
		t.Errorf("Delete through a string: %v, want ErrPath", err)
	}
	// Set of a map value over a map updates it key by key.
	set(t, d, crdt.Path{"address"}, map[string]any{"city": "Bergen", "zip": "5003"})
	commit(t, d)
	want = map[string]any{"city": "Bergen", "zip": "5003"}
	if got := get(t, d, "address"); !reflect.DeepEqual(got, want) {
		t.Fatalf("address = %#v, want %#v", got, want)
	}
}

func TestBadPaths(t *testing.T) {
	d := newDoc(t, actorA)
	for _, p := range []crdt.Path{nil, {}, {0}, {"a", 1.5}, {"a", -1}, {string([]byte{0xff})}} {
		if err := d.Set(p, 1); !errors.Is(err, crdt.ErrPath) {
			t.Errorf("Set(%#v): %v, want ErrPath", p, err)
		}
		if _, err := d.Get(crdt.Path(p)); !errors.Is(err, crdt.ErrPath) {
			t.Errorf("Get(%#v): %v, want ErrPath", p, err)
		}
		if err := d.Delete(crdt.Path(p)); !errors.Is(err, crdt.ErrPath) {
			t.Errorf("Delete(%#v): %v, want ErrPath", p, err)
		}
	}
}

func TestList(t *testing.T) {
	d := newDoc(t, actorA)
	set(t, d, crdt.Path{"l"}, []string{"a", "b"})
	commit(t, d)
	if err := d.InsertAt(crdt.Path{"l"}, 1, "x", 7); err != nil {
		t.Fatal(err)
	}
	set(t, d, crdt.Path{"l", 0}, "A")
	set(t, d, crdt.Path{"l", 4}, "end") // index == len appends
	commit(t, d)
	want := []any{"A", "x", int64(7), "b", "end"}
	if got := get(t, d, "l"); !reflect.DeepEqual(got, want) {
		t.Fatalf("l = %#v, want %#v", got, want)
	}
	if got := get(t, d, "l", 1); got != "x" {
		t.Fatalf("l[1] = %#v", got)
	}
	if err := d.Delete(crdt.Path{"l", 1}); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	want = []any{"A", int64(7), "b", "end"}
	if got := get(t, d, "l"); !reflect.DeepEqual(got, want) {
		t.Fatalf("after delete l = %#v, want %#v", got, want)
	}
	if err := d.Set(crdt.Path{"l", 9}, 1); !errors.Is(err, crdt.ErrPath) {
		t.Errorf("Set past the end: %v, want ErrPath", err)
	}
	if err := d.Delete(crdt.Path{"l", 9}); !errors.Is(err, crdt.ErrPath) {
		t.Errorf("Delete past the end: %v, want ErrPath", err)
	}
	if err := d.Delete(crdt.Path{"l", "key"}); !errors.Is(err, crdt.ErrPath) {
		t.Errorf("Delete with a key in a list: %v, want ErrPath", err)
	}
	if err := d.InsertAt(crdt.Path{"l"}, 9, 1); !errors.Is(err, crdt.ErrPath) {
		t.Errorf("Insert past the end: %v, want ErrPath", err)
	}
	if err := d.InsertAt(crdt.Path{"l", 0}, 0, 1); !errors.Is(err, crdt.ErrType) {
		t.Errorf("Insert into a string: %v, want ErrType", err)
	}
	// Insert creates a missing list, only at 0.
	if err := d.InsertAt(crdt.Path{"new"}, 1, "x"); !errors.Is(err, crdt.ErrPath) {
		t.Errorf("Insert at 1 of a missing list: %v, want ErrPath", err)
	}
	if err := d.InsertAt(crdt.Path{"new"}, 0, "x", "y"); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	if got := get(t, d, "new"); !reflect.DeepEqual(got, []any{"x", "y"}) {
		t.Fatalf("new = %#v", got)
	}
	// Nested maps inside lists.
	set(t, d, crdt.Path{"rows"}, []map[string]any{{"n": 1}})
	set(t, d, crdt.Path{"rows", 0, "n"}, 2)
	commit(t, d)
	if got := get(t, d, "rows", 0, "n"); got != int64(2) {
		t.Fatalf("rows[0].n = %#v", got)
	}
}

func TestListConcurrentEditsMerge(t *testing.T) {
	a := newDoc(t, actorA)
	set(t, a, crdt.Path{"l"}, []string{"m"})
	commit(t, a)
	b := newDoc(t, actorB)
	send(t, a, b)
	if err := a.InsertAt(crdt.Path{"l"}, 0, "first"); err != nil {
		t.Fatal(err)
	}
	commit(t, a)
	if err := b.InsertAt(crdt.Path{"l"}, 1, "last"); err != nil {
		t.Fatal(err)
	}
	commit(t, b)
	exchange(t, a, b)
	want := []any{"first", "m", "last"}
	for _, d := range []*crdt.Doc{a, b} {
		if got := get(t, d, "l"); !reflect.DeepEqual(got, want) {
			t.Fatalf("l = %#v, want %#v", got, want)
		}
	}
}

func TestText(t *testing.T) {
	d := newDoc(t, actorA)
	p := crdt.Path{"notes"}
	// Created on first splice; positions count runes, not bytes.
	if err := d.SpliceText(p, 0, 0, "h😀é!"); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	if err := d.SpliceText(p, 2, 1, "ÉÈ"); err != nil { // replace é
		t.Fatal(err)
	}
	if err := d.SpliceText(p, 1, 0, "→"); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	if got := get(t, d, "notes"); got != "h→😀ÉÈ!" {
		t.Fatalf("notes = %q", got)
	}
	if v, ok, err := d.GetTyped(crdt.Path{"notes"}); err != nil || !ok || v != crdt.Text("h→😀ÉÈ!") {
		t.Fatalf("GetTyped = %#v, %v, %v; want crdt.Text", v, ok, err)
	}
	// Splice at the very end (rune length 6).
	if err := d.SpliceText(p, 6, 0, "?"); err != nil {
		t.Fatal(err)
	}
	if err := d.SpliceText(p, 7, 1, "x"); !errors.Is(err, crdt.ErrPath) {
		t.Errorf("splice past the end: %v, want ErrPath", err)
	}
	if err := d.SpliceText(p, -1, 0, "x"); !errors.Is(err, crdt.ErrPath) {
		t.Errorf("negative splice: %v, want ErrPath", err)
	}
	if err := d.SpliceText(p, 0, 0, string([]byte{0xff})); !errors.Is(err, crdt.ErrType) {
		t.Errorf("invalid UTF-8 splice: %v, want ErrType", err)
	}
	set(t, d, crdt.Path{"plain"}, "s")
	if err := d.SpliceText(crdt.Path{"plain"}, 0, 0, "x"); !errors.Is(err, crdt.ErrType) {
		t.Errorf("splice into a plain string: %v, want ErrType", err)
	}
	// Set of a crdt.Text writes a text object; Set of a Text over text splices.
	set(t, d, crdt.Path{"t2"}, crdt.Text("abc"))
	set(t, d, crdt.Path{"t2"}, crdt.Text("abXc"))
	commit(t, d)
	if v, _, _ := d.GetTyped(crdt.Path{"t2"}); v != crdt.Text("abXc") {
		t.Fatalf("t2 = %#v", v)
	}
}

func TestTextConcurrentSplices(t *testing.T) {
	a := newDoc(t, actorA)
	p := crdt.Path{"body"}
	if err := a.SpliceText(p, 0, 0, "héllo wörld"); err != nil {
		t.Fatal(err)
	}
	commit(t, a)
	b := newDoc(t, actorB)
	send(t, a, b)
	if err := a.SpliceText(p, 0, 1, "H"); err != nil {
		t.Fatal(err)
	}
	commit(t, a)
	if err := b.SpliceText(p, 11, 0, "! 👋"); err != nil {
		t.Fatal(err)
	}
	commit(t, b)
	exchange(t, a, b)
	for _, d := range []*crdt.Doc{a, b} {
		if got := get(t, d, "body"); got != "Héllo wörld! 👋" {
			t.Fatalf("body = %q", got)
		}
	}
}

// A plain string written over a Text field (as JavaScript writes strings,
// and as Put writes a string field) edits the text, so concurrent edits to
// other parts of it survive.
func TestStringOverTextSplices(t *testing.T) {
	a := newDoc(t, actorA)
	set(t, a, crdt.Path{"body"}, crdt.Text("the quick fox"))
	commit(t, a)
	b := newDoc(t, actorB)
	send(t, a, b)
	set(t, a, crdt.Path{"body"}, "the quick brown fox")
	commit(t, a)
	if v, _, _ := a.GetTyped(crdt.Path{"body"}); v != crdt.Text("the quick brown fox") {
		t.Fatalf("writing a string over text made %#v, want text", v)
	}
	if err := b.Put(map[string]any{"body": "The quick fox jumps"}); err != nil {
		t.Fatal(err)
	}
	commit(t, b)
	exchange(t, a, b)
	for _, d := range []*crdt.Doc{a, b} {
		if got := get(t, d, "body"); got != "The quick brown fox jumps" {
			t.Fatalf("body = %q", got)
		}
	}
}

func TestCounter(t *testing.T) {
	a := newDoc(t, actorA)
	p := crdt.Path{"stock"}
	if err := a.Increment(p, 5); err != nil { // created from zero
		t.Fatal(err)
	}
	commit(t, a)
	// Get reads a counter as a plain int64; GetTyped keeps its kind.
	if got := get(t, a, "stock"); got != int64(5) {
		t.Fatalf("stock = %#v, want 5", got)
	}
	if got, _, _ := a.GetTyped(crdt.Path{"stock"}); got != crdt.Counter(5) {
		t.Fatalf("GetTyped(stock) = %#v, want Counter(5)", got)
	}
	b := newDoc(t, actorB)
	send(t, a, b)
	for range 3 {
		if err := a.Increment(p, 1); err != nil {
			t.Fatal(err)
		}
		commit(t, a)
	}
	if err := b.Increment(p, -2); err != nil {
		t.Fatal(err)
	}
	commit(t, b)
	exchange(t, a, b)
	for _, d := range []*crdt.Doc{a, b} {
		if got := get(t, d, "stock"); got != int64(6) {
			t.Fatalf("stock after concurrent increments = %#v, want 6", got)
		}
	}
	// Nested counters, and counters in lists, work too.
	if err := a.Increment(crdt.Path{"stats", "views"}, 2); err != nil {
		t.Fatal(err)
	}
	set(t, a, crdt.Path{"cs"}, []crdt.Counter{1})
	if err := a.Increment(crdt.Path{"cs", 0}, 2); err != nil {
		t.Fatal(err)
	}
	commit(t, a)
	if got := get(t, a, "stats", "views"); got != int64(2) {
		t.Fatalf("stats.views = %#v", got)
	}
	if got := get(t, a, "cs", 0); got != int64(3) {
		t.Fatalf("cs[0] = %#v", got)
	}
	set(t, a, crdt.Path{"name"}, "x")
	if err := a.Increment(crdt.Path{"name"}, 1); !errors.Is(err, crdt.ErrType) {
		t.Errorf("Increment of a string: %v, want ErrType", err)
	}
}

// Set of a Counter value over a counter increments by the difference, so it
// does not erase a concurrent increment.
func TestSetCounterIncrements(t *testing.T) {
	a := newDoc(t, actorA)
	set(t, a, crdt.Path{"n"}, crdt.Counter(10))
	commit(t, a)
	b := newDoc(t, actorB)
	send(t, a, b)
	set(t, a, crdt.Path{"n"}, crdt.Counter(13)) // +3
	commit(t, a)
	if err := b.Increment(crdt.Path{"n"}, 1); err != nil {
		t.Fatal(err)
	}
	commit(t, b)
	exchange(t, a, b)
	if got := get(t, a, "n"); got != int64(14) {
		t.Fatalf("n = %#v, want 14", got)
	}
}

func TestTombstone(t *testing.T) {
	d := newDoc(t, actorA)
	set(t, d, crdt.Path{"name"}, "x")
	commit(t, d)
	if d.Deleted() {
		t.Fatal("new record reads as deleted")
	}
	if err := d.SetDeleted(true); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	if !d.Deleted() {
		t.Fatal("Deleted() = false after SetDeleted(true)")
	}
	want := map[string]any{"name": "x"}
	if got := fields(t, d); !reflect.DeepEqual(got, want) {
		t.Fatalf("Fields of a tombstone = %#v, want %#v (no marker)", got, want)
	}
	if err := d.SetDeleted(true); err != nil {
		t.Fatal(err)
	}
	if ok, _ := d.Commit("", epoch); ok {
		t.Error("SetDeleted(true) twice made a change")
	}
	// The marker travels with the changes.
	o := newDoc(t, actorB)
	send(t, d, o)
	if !o.Deleted() {
		t.Fatal("tombstone did not travel")
	}
	if err := d.SetDeleted(false); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	if d.Deleted() || !reflect.DeepEqual(fields(t, d), want) {
		t.Fatalf("after restore: deleted=%v fields=%v", d.Deleted(), fields(t, d))
	}
	var m map[string]any
	if err := o.Decode(&m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m[crdt.TombstoneKey]; ok {
		t.Error("Decode into a map shows the tombstone marker")
	}
	if err := d.Put(map[string]any{crdt.TombstoneKey: true}); !errors.Is(err, crdt.ErrType) {
		t.Errorf("Put of the tombstone key: %v, want ErrType", err)
	}
}

func TestRefusedValues(t *testing.T) {
	d := newDoc(t, actorA)
	bad := string([]byte{'a', 0xff})
	cases := map[string]any{
		"NaN":             math.NaN(),
		"NaN32":           float32(math.NaN()),
		"NaN in list":     []float64{1, math.NaN()},
		"NaN in map":      map[string]any{"x": math.NaN()},
		"bad string":      bad,
		"bad text":        crdt.Text(bad),
		"bad nested":      map[string]any{"x": []any{bad}},
		"bad key":         map[string]int{bad: 1},
		"int keys":        map[int]string{1: "x"},
		"chan":            make(chan int),
		"func":            func() {},
		"complex":         complex(1, 2),
		"struct with fn":  struct{ F func() }{},
		"bad struct text": struct{ S string }{bad},
	}
	before := stateOf(t, d)
	for name, v := range cases {
		if err := d.Set(crdt.Path{"x"}, v); !errors.Is(err, crdt.ErrType) {
			t.Errorf("%s: Set = %v, want ErrType", name, err)
		}
		if err := d.InsertAt(crdt.Path{"l"}, 0, v); !errors.Is(err, crdt.ErrType) {
			t.Errorf("%s: Insert = %v, want ErrType", name, err)
		}
	}
	if err := d.Put(map[string]any{bad: 1}); !errors.Is(err, crdt.ErrType) {
		t.Errorf("Put with a bad key = %v, want ErrType", err)
	}
	if err := d.Put(42); !errors.Is(err, crdt.ErrType) {
		t.Errorf("Put(42) = %v, want ErrType", err)
	}
	before.check(t, d, "refused writes")
	// A value nested beyond the limit is refused, not a stack overflow.
	var deep any = 1
	for range 100 {
		deep = []any{deep}
	}
	if err := d.Set(crdt.Path{"deep"}, deep); !errors.Is(err, crdt.ErrType) {
		t.Errorf("deeply nested value: %v, want ErrType", err)
	}
	type cyc struct{ Next *cyc }
	c := &cyc{}
	c.Next = c
	if err := d.Set(crdt.Path{"cyc"}, c); !errors.Is(err, crdt.ErrType) {
		t.Errorf("cyclic value: %v, want ErrType", err)
	}
}

func TestEqual(t *testing.T) {
	now := time.UnixMilli(5)
	yes := [][2]any{
		{nil, nil},
		{"a", crdt.Text("a")},
		{crdt.Text("a"), "a"},
		{int64(1), int64(1)},
		{[]byte("x"), []byte("x")},
		{now, now.In(time.FixedZone("y", 7200))},
		{map[string]any{"a": []any{"x", crdt.Text("y")}}, map[string]any{"a": []any{crdt.Text("x"), "y"}}},
	}
	no := [][2]any{
		{nil, "a"},
		{"a", "b"},
		{int64(1), 1.0},
		{int64(1), uint64(1)},
		{[]byte("x"), "x"},
		{map[string]any{"a": 1}, map[string]any{"b": 1}},
		{map[string]any{"a": nil}, map[string]any{}},
		{[]any{1}, []any{1, 2}},
		{crdt.Counter(1), int64(1)},
	}
	for _, c := range yes {
		if !crdt.Equal(c[0], c[1]) {
			t.Errorf("Equal(%#v, %#v) = false", c[0], c[1])
		}
	}
	for _, c := range no {
		if crdt.Equal(c[0], c[1]) {
			t.Errorf("Equal(%#v, %#v) = true", c[0], c[1])
		}
	}
}

func TestActor(t *testing.T) {
	if _, err := crdt.New("not hex"); err == nil {
		t.Error("New with a non-hex actor succeeded")
	}
	d := newDoc(t, actorA)
	if d.Actor() != actorA {
		t.Errorf("Actor() = %q", d.Actor())
	}
}
