package crdt_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// TestImportChangesReports: ImportChanges reports the heads around the
// import, the stream's changes and the ones that were new, as reading
// them again would.
func TestImportChangesReports(t *testing.T) {
	a := newDoc(t, actorA)
	defer a.Free()
	set(t, a, crdt.Path{"x"}, 1)
	commit(t, a)
	b, err := a.Fork(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()
	if err := b.SetActor(actorB); err != nil {
		t.Fatal(err)
	}
	set(t, b, crdt.Path{"y"}, 2)
	commit(t, b)
	set(t, a, crdt.Path{"x"}, 3)
	commit(t, a)
	set(t, a, crdt.Path{"z"}, 4)
	commit(t, a)
	data, err := a.ChangesSince(nil) // the first change b holds already
	if err != nil {
		t.Fatal(err)
	}
	before := b.Heads()
	imp, err := b.ImportChanges(data)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := crdt.ParseChanges(data)
	if err != nil {
		t.Fatal(err)
	}
	if imp.N != 2 || !imp.Before.Equal(before) || !imp.After.Equal(b.Heads()) || !reflect.DeepEqual(imp.Stream, stream) {
		t.Fatalf("reported %d new, heads %v to %v, stream %v; want 2, %v to %v, %v", imp.N, imp.Before, imp.After, imp.Stream, before, b.Heads(), stream)
	}
	since, err := crdt.ParseChanges(mustSince(t, b, before))
	if err != nil {
		t.Fatal(err)
	}
	if len(imp.Added) != len(since) {
		t.Fatalf("added %v, the changes since %v", imp.Added, since)
	}
	for i := range since {
		got, want := imp.Added[i], since[i]
		if got.Hash != want.Hash || !crdt.Heads(got.Deps).Equal(want.Deps) {
			t.Fatalf("added %v, the changes since %v", imp.Added, since)
		}
	}
	// Again: nothing new, the same heads on both sides.
	again, err := b.ImportChanges(data)
	if err != nil || again.N != 0 || len(again.Added) != 0 || !again.Before.Equal(b.Heads()) || !again.After.Equal(b.Heads()) {
		t.Fatalf("a repeated import reported %+v, %v", again, err)
	}
	// Refused bytes: an error, the document as it was.
	if _, err := b.ImportChanges([]byte("not automerge")); !errors.Is(err, crdt.ErrCorrupt) {
		t.Fatalf("bad bytes: %v, want ErrCorrupt", err)
	}
}

func mustSince(t *testing.T, d *crdt.Doc, since crdt.Heads) []byte {
	t.Helper()
	b, err := d.ChangesSince(since)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSnapshotAt: a snapshot at past heads is the snapshot of a fork at
// them, tombstone included; none is the empty document; heads the
// document lacks are an error.
func TestSnapshotAt(t *testing.T) {
	d := newDoc(t, actorA)
	defer d.Free()
	set(t, d, crdt.Path{"x"}, 1)
	set(t, d, crdt.Path{"t"}, crdt.Text("hi"))
	commit(t, d)
	first := d.Heads()
	if err := d.SetDeleted(true); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	deleted := d.Heads()
	set(t, d, crdt.Path{"x"}, 2)
	commit(t, d)
	for _, at := range []crdt.Heads{first, deleted, d.Heads()} {
		f, err := d.Fork(at)
		if err != nil {
			t.Fatal(err)
		}
		want, err := f.Snapshot()
		f.Free()
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.SnapshotAt(at)
		if err != nil {
			t.Fatal(err)
		}
		if got.Deleted() != want.Deleted() || !reflect.DeepEqual(got.Fields(), want.Fields()) {
			t.Fatalf("at %v: %v (deleted %v), a fork's %v (deleted %v)", at, got.Fields(), got.Deleted(), want.Fields(), want.Deleted())
		}
	}
	if s, err := d.SnapshotAt(deleted); err != nil || !s.Deleted() {
		t.Fatalf("at the delete: deleted %v, %v", s.Deleted(), err)
	}
	empty, err := d.SnapshotAt(nil)
	if err != nil || empty.Deleted() || empty.Fields() == nil || len(empty.Fields()) != 0 {
		t.Fatalf("no heads: %v, %v; want no fields", empty.Fields(), err)
	}
	var unknown crdt.Hash
	unknown[0] = 1
	if _, err := d.SnapshotAt(crdt.Heads{unknown}); !errors.Is(err, crdt.ErrUnknownHeads) {
		t.Fatalf("unknown heads: %v, want ErrUnknownHeads", err)
	}
}
