package crdt_test

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

type Audit struct {
	CreatedBy string    `ferry:"created_by"`
	Updated   time.Time `ferry:"updated"`
}

type audit struct {
	Rev int `ferry:"rev"` // promoted from an unexported embedded struct
}

type Address struct {
	City string `ferry:"city"`
	Zip  string `ferry:"zip,omitempty"`
}

type Item struct {
	Audit                        // flattened
	audit                        // flattened too, like encoding/json
	ID      string               `ferry:"-"`
	Name    string               `ferry:"name"`
	Price   float64              `ferry:"price"`
	Qty     int                  `ferry:"qty"`
	Note    string               `ferry:"note,omitempty"`
	Tags    []string             `ferry:"tags"`
	Blob    []byte               `ferry:"blob"`
	Addr    Address              `ferry:"address"`
	Ptr     *int                 `ferry:"ptr"`
	NilPtr  *string              `ferry:"nil_ptr"`
	Counts  map[string]int       `ferry:"counts"`
	Body    crdt.Text            `ferry:"body"`
	Stock   crdt.Counter         `ferry:"stock"`
	Any     any                  `ferry:"any"`
	Untag   uint8                // stored as "Untag"
	private int                  //nolint:unused // never stored
	Extras  map[string][]float64 `ferry:"extras,omitempty"`
}

func sampleItem() Item {
	seven := 7
	return Item{
		Audit:  Audit{CreatedBy: "ann", Updated: time.Date(2024, 5, 6, 7, 8, 9, 987_654_321, time.UTC)},
		audit:  audit{Rev: 3},
		ID:     "not stored",
		Name:   "lamp",
		Price:  19.5,
		Qty:    2,
		Tags:   []string{"home", "light"},
		Blob:   []byte{1, 2, 3},
		Addr:   Address{City: "Oslo"},
		Ptr:    &seven,
		Counts: map[string]int{"a": 1, "b": 2},
		Body:   crdt.Text("bright"),
		Stock:  10,
		Any:    map[string]any{"k": []any{"v"}},
		Untag:  9,
	}
}

func TestPutStoresTaggedFields(t *testing.T) {
	d := newDoc(t, actorA)
	if err := d.Put(sampleItem()); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	want := map[string]any{
		"created_by": "ann",
		"updated":    time.Date(2024, 5, 6, 7, 8, 9, 987_000_000, time.UTC), // ms precision
		"rev":        int64(3),
		"name":       "lamp",
		"price":      19.5,
		"qty":        int64(2),
		"tags":       []any{"home", "light"},
		"blob":       []byte{1, 2, 3},
		"address":    map[string]any{"city": "Oslo"}, // zip omitted
		"ptr":        int64(7),
		"nil_ptr":    nil,
		"counts":     map[string]any{"a": int64(1), "b": int64(2)},
		"body":       "bright",  // Text reads as a string from Fields
		"stock":      int64(10), // a counter reads as int64 from Fields
		"any":        map[string]any{"k": []any{"v"}},
		"Untag":      uint64(9),
	}
	if got := fields(t, d); !reflect.DeepEqual(got, want) {
		t.Fatalf("Fields:\n got %#v\nwant %#v", got, want)
	}
	if v, _, _ := d.GetTyped(crdt.Path{"body"}); v != crdt.Text("bright") {
		t.Errorf("body is %#v, want a text object", v)
	}
}

func TestPutDecodeRoundTrip(t *testing.T) {
	d := newDoc(t, actorA)
	in := sampleItem()
	if err := d.Put(&in); err != nil { // a pointer works too
		t.Fatal(err)
	}
	commit(t, d)
	l, err := crdt.Load(d.Save(), actorB)
	if err != nil {
		t.Fatal(err)
	}
	var out Item
	if err := l.Decode(&out); err != nil {
		t.Fatal(err)
	}
	want := in
	want.ID = ""
	want.Updated = want.Updated.Truncate(time.Millisecond)
	want.Any = map[string]any{"k": []any{"v"}}
	if !reflect.DeepEqual(out, want) {
		t.Fatalf("Decode:\n got %#v\nwant %#v", out, want)
	}
}

func TestPutOmitEmptyDeletes(t *testing.T) {
	d := newDoc(t, actorA)
	it := sampleItem()
	it.Note = "fragile"
	it.Addr.Zip = "0150"
	it.Extras = map[string][]float64{"w": {1.5}}
	if err := d.Put(it); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	for _, p := range [][]any{{"note"}, {"address", "zip"}, {"extras"}} {
		if _, ok, _ := d.Lookup(crdt.Path(p)); !ok {
			t.Fatalf("%v missing after Put", p)
		}
	}
	it.Note, it.Addr.Zip, it.Extras = "", "", nil
	if err := d.Put(it); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	for _, p := range [][]any{{"note"}, {"address", "zip"}, {"extras"}} {
		if _, ok, _ := d.Lookup(crdt.Path(p)); ok {
			t.Errorf("%v still present after Put with its zero value (omitempty)", p)
		}
	}
	if got := get(t, d, "address", "city"); got != "Oslo" {
		t.Errorf("address.city = %#v", got)
	}
}

// Put leaves top-level fields it does not name alone (an older app version
// must not erase what a newer one added).
func TestPutKeepsUnknownTopLevelFields(t *testing.T) {
	d := newDoc(t, actorA)
	set(t, d, crdt.Path{"added_by_v2"}, "keep me")
	if err := d.Put(Address{City: "Oslo"}); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	if got := get(t, d, "added_by_v2"); got != "keep me" {
		t.Fatalf("Put erased an unnamed field: %#v", got)
	}
}

// Put of an unchanged struct writes nothing.
func TestPutUnchangedIsNoChange(t *testing.T) {
	d := newDoc(t, actorA)
	it := sampleItem()
	if err := d.Put(it); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	var back Item
	if err := d.Decode(&back); err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{it, &it, back} {
		if err := d.Put(v); err != nil {
			t.Fatal(err)
		}
		if ok, err := d.Commit("", epoch); ok || err != nil {
			t.Fatalf("Commit after Put(%T) of an unchanged struct = %v, %v; want false", v, ok, err)
		}
	}
}

// Changing one field of a struct writes only that field: a concurrent edit
// of another field on another replica survives the merge.
func TestPutWritesOnlyChangedFields(t *testing.T) {
	a := newDoc(t, actorA)
	it := sampleItem()
	if err := a.Put(it); err != nil {
		t.Fatal(err)
	}
	commit(t, a)
	b := newDoc(t, actorB)
	send(t, a, b)

	ia := it
	ia.Price = 25
	ia.Tags = []string{"home", "light", "sale"}
	if err := a.Put(ia); err != nil {
		t.Fatal(err)
	}
	commit(t, a)

	var ib Item
	if err := b.Decode(&ib); err != nil {
		t.Fatal(err)
	}
	ib.Name = "desk lamp"
	ib.Addr.City = "Bergen"
	ib.Stock += 5
	ib.Body = "bright and warm"
	ib.Counts["c"] = 3
	if err := b.Put(ib); err != nil {
		t.Fatal(err)
	}
	commit(t, b)
	// a also moves stock, concurrently.
	ia.Stock -= 1
	if err := a.Put(ia); err != nil {
		t.Fatal(err)
	}
	commit(t, a)

	exchange(t, a, b)
	var ga, gb Item
	if err := a.Decode(&ga); err != nil {
		t.Fatal(err)
	}
	if err := b.Decode(&gb); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ga, gb) {
		t.Fatalf("replicas differ:\n%#v\n%#v", ga, gb)
	}
	want := it
	want.ID = ""
	want.Updated = want.Updated.Truncate(time.Millisecond)
	want.Price = 25
	want.Tags = []string{"home", "light", "sale"}
	want.Name = "desk lamp"
	want.Addr.City = "Bergen"
	want.Stock = 14
	want.Body = "bright and warm"
	want.Counts = map[string]int{"a": 1, "b": 2, "c": 3}
	if !reflect.DeepEqual(ga, want) {
		t.Fatalf("merged:\n got %#v\nwant %#v", ga, want)
	}
}

func TestDecodeIntoMap(t *testing.T) {
	d := newDoc(t, actorA)
	if err := d.Put(sampleItem()); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatal(err)
	}
	// Decoding into any strips crdt.Text and crdt.Counter to plain values.
	if m["body"] != "bright" || m["stock"] != int64(10) || m["name"] != "lamp" {
		t.Fatalf("Decode into map: %#v", m)
	}
	var ints map[string]int
	d2 := newDoc(t, actorB)
	if err := d2.Put(map[string]int{"a": 1, "b": -2}); err != nil {
		t.Fatal(err)
	}
	if err := d2.Decode(&ints); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ints, map[string]int{"a": 1, "b": -2}) {
		t.Fatalf("Decode into map[string]int: %#v", ints)
	}
}

func TestDecodeTypeMismatch(t *testing.T) {
	d := newDoc(t, actorA)
	set(t, d, crdt.Path{"name"}, 42)
	set(t, d, crdt.Path{"qty"}, "many")
	set(t, d, crdt.Path{"neg"}, -1)
	set(t, d, crdt.Path{"big"}, 300)
	set(t, d, crdt.Path{"frac"}, 1.5)
	commit(t, d)
	cases := []struct {
		name string
		out  any
	}{
		{"int into string", &struct {
			Name string `ferry:"name"`
		}{}},
		{"string into int", &struct {
			Qty int `ferry:"qty"`
		}{}},
		{"negative into uint", &struct {
			Neg uint `ferry:"neg"`
		}{}},
		{"overflow", &struct {
			Big int8 `ferry:"big"`
		}{}},
		{"fraction into int", &struct {
			Frac int `ferry:"frac"`
		}{}},
		{"scalar into struct", &struct {
			Name Address `ferry:"name"`
		}{}},
		{"scalar into slice", &struct {
			Name []string `ferry:"name"`
		}{}},
		{"scalar into time", &struct {
			Name time.Time `ferry:"name"`
		}{}},
		{"map into string map", new(map[string]string)},
	}
	for _, c := range cases {
		if err := d.Decode(c.out); !errors.Is(err, crdt.ErrType) {
			t.Errorf("%s: Decode = %v, want ErrType", c.name, err)
		}
	}
	var s struct{}
	if err := d.Decode(s); !errors.Is(err, crdt.ErrType) {
		t.Errorf("Decode into a non-pointer: %v, want ErrType", err)
	}
	if err := d.Decode((*Item)(nil)); !errors.Is(err, crdt.ErrType) {
		t.Errorf("Decode into a nil pointer: %v, want ErrType", err)
	}
	// Numbers convert where the value fits.
	var ok struct {
		Big  int16   `ferry:"big"`
		Neg  float32 `ferry:"neg"`
		Frac float64 `ferry:"frac"`
	}
	if err := d.Decode(&ok); err != nil || ok.Big != 300 || ok.Neg != -1 || ok.Frac != 1.5 {
		t.Errorf("numeric conversion: %+v, %v", ok, err)
	}
}

func TestDecodeValue(t *testing.T) {
	d := newDoc(t, actorA)
	if err := d.Put(sampleItem()); err != nil {
		t.Fatal(err)
	}
	var a Address
	if err := crdt.DecodeValue(get(t, d, "address"), &a); err != nil || a.City != "Oslo" {
		t.Fatalf("DecodeValue = %+v, %v", a, err)
	}
	var n int
	if err := crdt.DecodeValue("x", &n); !errors.Is(err, crdt.ErrType) {
		t.Fatalf("DecodeValue(string into int) = %v, want ErrType", err)
	}
}

func TestTimePrecision(t *testing.T) {
	d := newDoc(t, actorA)
	type T struct {
		At   time.Time  `ferry:"at"`
		Zero time.Time  `ferry:"zero"`
		Opt  *time.Time `ferry:"opt,omitempty"`
	}
	at := time.Date(2030, 1, 2, 3, 4, 5, 678_999_999, time.FixedZone("CET", 3600))
	if err := d.Put(T{At: at}); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	var out T
	if err := d.Decode(&out); err != nil {
		t.Fatal(err)
	}
	if !out.At.Equal(at.Truncate(time.Millisecond)) || out.At.Location() != time.UTC {
		t.Errorf("At = %v, want %v in UTC", out.At, at.Truncate(time.Millisecond))
	}
	if !out.Zero.Equal(time.Time{}) {
		t.Errorf("zero time came back as %v", out.Zero)
	}
	if _, ok, _ := d.Lookup(crdt.Path{"opt"}); ok {
		t.Error("nil omitempty pointer was stored")
	}
	// Rewriting the same instant at a finer precision is no change.
	if err := d.Put(T{At: at.Add(-100 * time.Nanosecond)}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := d.Commit("", epoch); ok {
		t.Error("Put of the same millisecond made a change")
	}
}

// Put of a list writes only the elements a minimal diff changes, so
// concurrent inserts and edits elsewhere in the list survive.
func TestPutListKeepsConcurrentEdits(t *testing.T) {
	type doc struct {
		Items []string `ferry:"items"`
	}
	a := newDoc(t, actorA)
	if err := a.Put(doc{Items: []string{"a", "b", "c", "d"}}); err != nil {
		t.Fatal(err)
	}
	commit(t, a)
	b := newDoc(t, actorB)
	send(t, a, b)
	// a adds at both ends and drops "c"; b inserts after "b".
	if err := a.Put(doc{Items: []string{"first", "a", "b", "d", "last"}}); err != nil {
		t.Fatal(err)
	}
	commit(t, a)
	if err := b.InsertAt(crdt.Path{"items"}, 2, "b2"); err != nil {
		t.Fatal(err)
	}
	commit(t, b)
	exchange(t, a, b)
	want := []any{"first", "a", "b", "b2", "d", "last"}
	for _, d := range []*crdt.Doc{a, b} {
		if got := get(t, d, "items"); !reflect.DeepEqual(got, want) {
			t.Fatalf("items = %#v, want %#v", got, want)
		}
	}
}
