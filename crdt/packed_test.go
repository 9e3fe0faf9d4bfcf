package crdt_test

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// everyKind is a record holding each kind a record can hold, nested in
// maps and lists too.
func everyKind() map[string]any {
	return map[string]any{
		"nil":     nil,
		"yes":     true,
		"no":      false,
		"name":    "Tea ☕",
		"notes":   crdt.Text("steep 3 minutes"),
		"blob":    []byte{0, 1, 2, 255},
		"price":   4.5,
		"neg":     math.Inf(-1),
		"qty":     int64(-7),
		"big":     uint64(math.MaxUint64),
		"stock":   crdt.Counter(42),
		"when":    time.UnixMilli(1_700_000_123_456).UTC(),
		"empty":   map[string]any{},
		"nothing": []any{},
		"address": map[string]any{"city": "Oslo", "zip": int64(150), "geo": []any{59.9, 10.7}},
		"tags":    []any{"a", crdt.Text("b"), int64(3), map[string]any{"deep": []any{nil, true}}},
	}
}

func TestPackedFieldsRoundTrip(t *testing.T) {
	d := newDoc(t, actorA)
	if err := d.Put(everyKind()); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	packed, err := d.PackedFields()
	if err != nil {
		t.Fatal(err)
	}
	typed, err := d.TypedFields()
	if err != nil {
		t.Fatal(err)
	}
	got, err := crdt.UnpackFields(packed, true)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, typed) {
		t.Fatalf("typed:\n got %#v\nwant %#v", got, typed)
	}
	got, err = crdt.UnpackFields(packed, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := fields(t, d); !reflect.DeepEqual(got, want) {
		t.Fatalf("plain:\n got %#v\nwant %#v", got, want)
	}
	// Equal fields pack to equal bytes, whatever the map order.
	again, err := crdt.PackFields(typed)
	if err != nil || !bytes.Equal(again, packed) {
		t.Fatalf("packing the same fields again differs: %v", err)
	}
}

func TestDecodePackedMatchesDecode(t *testing.T) {
	type address struct {
		City string `ferry:"city"`
	}
	type product struct {
		Name    string       `ferry:"name"`
		Notes   crdt.Text    `ferry:"notes"`
		Stock   crdt.Counter `ferry:"stock"`
		Qty     int          `ferry:"qty"`
		Price   float32      `ferry:"price"`
		When    time.Time    `ferry:"when"`
		Address *address     `ferry:"address"`
		Tags    []any        `ferry:"tags"`
		Blob    []byte       `ferry:"blob"`
	}
	d := newDoc(t, actorA)
	if err := d.Put(everyKind()); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	var want, got product
	if err := d.Decode(&want); err != nil {
		t.Fatal(err)
	}
	packed, _ := d.PackedFields()
	if err := crdt.DecodePacked(packed, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("DecodePacked:\n got %+v\nwant %+v", got, want)
	}
	// The same type errors as Decode.
	var wrong struct {
		Name int `ferry:"name"`
	}
	if err := crdt.DecodePacked(packed, &wrong); !errors.Is(err, crdt.ErrType) {
		t.Fatalf("DecodePacked into the wrong type = %v, want ErrType", err)
	}
}

// Damaged packed bytes give ErrCorrupt: never a panic, never a partial
// record.
func TestUnpackDamaged(t *testing.T) {
	packed, err := crdt.PackFields(everyKind())
	if err != nil {
		t.Fatal(err)
	}
	for n := range len(packed) {
		if _, err := crdt.UnpackFields(packed[:n], true); !errors.Is(err, crdt.ErrCorrupt) {
			t.Fatalf("cut to %d of %d bytes: %v, want ErrCorrupt", n, len(packed), err)
		}
	}
	for _, bad := range [][]byte{
		append(bytes.Clone(packed), 0),     // bytes past the end
		{9, 11, 0},                         // unknown version
		{1, 12, 0},                         // a list, not a map
		{1, 11, 0xff, 0xff, 0xff, 0xff, 1}, // a count past the end
		{1, 11, 1, 1, 'a', 99},             // unknown tag
		{1, 11, 1, 1, 0xff, 0},             // a key that is not UTF-8
		{1, 11, 2, 1, 'a', 0, 1, 'a', 0},   // a repeated key
	} {
		if _, err := crdt.UnpackFields(bad, true); !errors.Is(err, crdt.ErrCorrupt) {
			t.Fatalf("UnpackFields(% x) = %v, want ErrCorrupt", bad, err)
		}
	}
	deep := []byte{1, 11, 1, 1, 'a'}
	for range 2000 {
		deep = append(deep, 12, 1)
	}
	deep = append(deep, 0)
	if _, err := crdt.UnpackFields(deep, true); !errors.Is(err, crdt.ErrCorrupt) {
		t.Fatalf("nested 2000 deep: %v, want ErrCorrupt", err)
	}
}

func FuzzUnpackFields(f *testing.F) {
	packed, _ := crdt.PackFields(everyKind())
	f.Add(packed)
	f.Add([]byte{1, 11, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := crdt.UnpackFields(b, true)
		if err != nil {
			if !errors.Is(err, crdt.ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		// What unpacks packs again, and that form is stable.
		again, err := crdt.PackFields(m)
		if err != nil {
			t.Fatalf("repacking: %v", err)
		}
		m2, err := crdt.UnpackFields(again, true)
		if err != nil {
			t.Fatalf("unpacking the repacked form: %v", err)
		}
		if third, err := crdt.PackFields(m2); err != nil || !bytes.Equal(third, again) {
			t.Fatalf("packing is not stable: %v", err)
		}
	})
}
