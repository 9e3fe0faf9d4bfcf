package crdt_test

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// Distinct actors for the documents in a test.
const (
	actorA = "aa01"
	actorB = "bb02"
	actorC = "cc03"
)

// epoch is the commit time tests pass in: crdt takes no clock.
var epoch = time.UnixMilli(1_700_000_000_000).UTC()

func newDoc(t testing.TB, actor string) *crdt.Doc {
	t.Helper()
	d, err := crdt.New(actor)
	if err != nil {
		t.Fatalf("New(%q): %v", actor, err)
	}
	return d
}

func set(t testing.TB, d *crdt.Doc, p crdt.Path, v any) {
	t.Helper()
	if err := d.Set(p, v); err != nil {
		t.Fatalf("Set(%v, %#v): %v", p, v, err)
	}
}

// commit commits and fails the test if there was nothing to commit.
func commit(t testing.TB, d *crdt.Doc) {
	t.Helper()
	ok, err := d.Commit("", epoch)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if !ok {
		t.Fatalf("Commit: nothing to commit")
	}
}

func get(t testing.TB, d *crdt.Doc, path ...any) any {
	t.Helper()
	v, err := d.Get(crdt.Path(path))
	if err != nil {
		t.Fatalf("Get(%v): %v", path, err)
	}
	return v
}

func fields(t testing.TB, d *crdt.Doc) map[string]any {
	t.Helper()
	m, err := d.Fields()
	if err != nil {
		t.Fatalf("Fields: %v", err)
	}
	return m
}

// send imports from's whole history into to, and returns how many changes
// were new.
func send(t testing.TB, from, to *crdt.Doc) int {
	t.Helper()
	data, err := from.ChangesSince(nil)
	if err != nil {
		t.Fatalf("ChangesSince(nil): %v", err)
	}
	n, err := to.Import(data)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	return n
}

// sendSince imports into to the changes from has since to's heads (the whole
// history when to holds changes from has not seen).
func sendSince(t testing.TB, from, to *crdt.Doc) int {
	t.Helper()
	data, err := from.ChangesSince(to.Heads())
	if err != nil {
		if data, err = from.ChangesSince(nil); err != nil {
			t.Fatalf("ChangesSince: %v", err)
		}
	}
	n, err := to.Import(data)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	return n
}

// exchange makes a and b hold the same changes.
func exchange(t testing.TB, a, b *crdt.Doc) {
	t.Helper()
	send(t, a, b)
	send(t, b, a)
}

// fork returns a copy of d at its current version that writes as actor.
func fork(t testing.TB, d *crdt.Doc, actor string) *crdt.Doc {
	t.Helper()
	f, err := d.Fork(nil)
	if err != nil {
		t.Fatalf("Fork: %v", err)
	}
	if err := f.SetActor(actor); err != nil {
		t.Fatalf("SetActor: %v", err)
	}
	return f
}

// state is everything observable about a document, to check that a failed
// call left it exactly as it was.
type state struct {
	save   []byte
	heads  crdt.Heads
	fields map[string]any
}

func stateOf(t testing.TB, d *crdt.Doc) state {
	t.Helper()
	return state{save: d.Save(), heads: d.Heads(), fields: fields(t, d)}
}

func (s state) check(t testing.TB, d *crdt.Doc, what string) {
	t.Helper()
	now := stateOf(t, d)
	if !now.heads.Equal(s.heads) {
		t.Fatalf("%s: heads changed from %v to %v", what, s.heads, now.heads)
	}
	if !reflect.DeepEqual(now.fields, s.fields) {
		t.Fatalf("%s: fields changed from %v to %v", what, s.fields, now.fields)
	}
	if !bytes.Equal(now.save, s.save) {
		t.Fatalf("%s: saved bytes changed", what)
	}
}
