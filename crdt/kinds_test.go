package crdt

import (
	"testing"
	"time"
)

// Values read plain (counters as int64, text as string) and written back
// keep their kind, so a read-modify-write through plain Go values does not
// turn a counter into a scalar and lose concurrent increments.
func TestPlainWritesKeepKinds(t *testing.T) {
	a, _ := New("aa")
	a.Put(map[string]any{"stock": Counter(10), "notes": Text("hello world")})
	a.Commit("", time.Time{})
	b, _ := New("bb")
	all, _ := a.ChangesSince(nil)
	b.Import(all)

	fields, _ := a.Fields()
	fields["stock"] = fields["stock"].(int64) - 3 // plain int64 write
	fields["notes"] = "hello there world"         // plain string write
	if err := a.Put(fields); err != nil {
		t.Fatal(err)
	}
	a.Commit("", time.Time{})
	b.Increment(Path{"stock"}, 5)
	b.SpliceText(Path{"notes"}, 0, 5, "HELLO")
	b.Commit("", time.Time{})

	ca, _ := a.ChangesSince(nil)
	cb, _ := b.ChangesSince(nil)
	a.Import(cb)
	b.Import(ca)
	for _, d := range []*Doc{a, b} {
		stock, _, _ := d.GetTyped(Path{"stock"})
		notes, _, _ := d.GetTyped(Path{"notes"})
		if stock != Counter(12) {
			t.Fatalf("stock = %#v, want Counter(12): both the -3 and the +5 count", stock)
		}
		if notes != Text("HELLO there world") {
			t.Fatalf("notes = %#v: both text edits should survive", notes)
		}
	}
}
