package storetest

import (
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// Editor makes a device's Automerge changes to one record, for tests that
// push them to a relay or append them to a store. It lives here, beside
// the Store suite, because every relay package's tests can import this
// package without an import cycle.
type Editor struct {
	// Doc is the device's copy of the record; a test may change it
	// directly (then Edit's next changes carry that too), or Reset it.
	Doc *crdt.Doc
	// At are the heads the next Edit's changes start from: those of the
	// changes Edit last returned, or of what Pulled imported.
	At crdt.Heads

	t testing.TB
}

// NewEditor returns an Editor of an empty record, writing as actor.
func NewEditor(t testing.TB, actor string) *Editor {
	t.Helper()
	d, err := crdt.New(actor)
	if err != nil {
		t.Fatal(err)
	}
	return &Editor{Doc: d, t: t}
}

// Edit sets fields, commits, and returns the changes since the last Edit
// (or Pulled).
func (e *Editor) Edit(fields map[string]any) []byte {
	e.t.Helper()
	if err := e.Doc.Put(fields); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.Doc.Commit("", time.Time{}); err != nil {
		e.t.Fatal(err)
	}
	b, err := e.Doc.ChangesSince(e.At)
	if err != nil {
		e.t.Fatal(err)
	}
	e.At = e.Doc.Heads()
	return b
}

// Pulled brings e up to date with changes the device pulled: its next
// Edit's changes build on them and carry only what it adds.
func (e *Editor) Pulled(data []byte) {
	e.t.Helper()
	if _, err := e.Doc.Import(data); err != nil {
		e.t.Fatal(err)
	}
	e.At = e.Doc.Heads()
}

// FieldsAfter returns the fields of a fresh document that imported parts
// (changes or saved documents), as a device that pulled them reads them.
func FieldsAfter(t testing.TB, parts ...[]byte) map[string]any {
	t.Helper()
	d, err := crdt.New("")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if _, err := d.Import(p); err != nil {
			t.Fatal(err)
		}
	}
	f, err := d.Fields()
	if err != nil {
		t.Fatal(err)
	}
	return f
}
