package crdt_test

import (
	"fmt"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// TestSavedSize: SavedSize is the size Save gives, for a deferred document
// loaded from a snapshot and changes, and for a built one; the deferred
// document stays deferred, takes changes after, and builds to the same
// document.
func TestSavedSize(t *testing.T) {
	src := newDoc(t, "aa01")
	set(t, src, crdt.Path{"title"}, "first")
	commit(t, src)
	snap := src.Save()
	at := src.Heads()
	for i := range 20 {
		set(t, src, crdt.Path{fmt.Sprint("k", i%5)}, int64(i))
		commit(t, src)
	}
	tail, err := src.ChangesSince(at)
	if err != nil {
		t.Fatal(err)
	}
	d, err := crdt.LoadDeferred(append(append([]byte{}, snap...), tail...))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	n, err := d.SavedSize()
	if err != nil {
		t.Fatal(err)
	}
	if want := len(src.Save()); n != want {
		t.Fatalf("SavedSize %d, Save %d", n, want)
	}
	if !d.Deferred() {
		t.Fatal("SavedSize built the deferred document")
	}
	// It takes changes after, measures them, and builds to src.
	at = src.Heads()
	set(t, src, crdt.Path{"title"}, "second")
	commit(t, src)
	more, err := src.ChangesSince(at)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := d.Import(more); err != nil || k != 1 {
		t.Fatalf("import after SavedSize: %d, %v", k, err)
	}
	if n, err = d.SavedSize(); err != nil || n != len(src.Save()) {
		t.Fatalf("SavedSize %d (%v), Save %d", n, err, len(src.Save()))
	}
	if err := d.Build(); err != nil {
		t.Fatal(err)
	}
	if !d.Heads().Equal(src.Heads()) || get(t, d, "title") != "second" {
		t.Fatalf("built: heads %v, title %v; want %v, second", d.Heads(), get(t, d, "title"), src.Heads())
	}
	if n, err = d.SavedSize(); err != nil || n != len(src.Save()) {
		t.Fatalf("built: SavedSize %d (%v), Save %d", n, err, len(src.Save()))
	}
}
