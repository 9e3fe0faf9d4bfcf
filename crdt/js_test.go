package crdt_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// jsScenarios are the JavaScript-made changes in testdata/js (see its
// README): a JavaScript app may push them through the relay.
var jsScenarios = []string{"values", "concurrent", "random"}

func readJS(t *testing.T, name string) (changes, doc []byte) {
	t.Helper()
	changes, err := os.ReadFile(filepath.Join("testdata", "js", name+".changes"))
	if err != nil {
		t.Fatal(err)
	}
	if doc, err = os.ReadFile(filepath.Join("testdata", "js", name+".doc")); err != nil {
		t.Fatal(err)
	}
	return changes, doc
}

// reloads checks that d's saved form loads back to the same document.
func reloads(t *testing.T, d *crdt.Doc) {
	t.Helper()
	l, err := crdt.Load(d.Save(), "")
	if err != nil {
		t.Fatalf("Load(Save()): %v", err)
	}
	if !l.Heads().Equal(d.Heads()) {
		t.Fatal("Load(Save()): heads differ")
	}
	if !crdt.Equal(fields(t, l), fields(t, d)) {
		t.Fatal("Load(Save()): fields differ")
	}
}

// JavaScript's changes are in the encoding the Go side's Automerge writes,
// so Import accepts them (whole, one at a time, or inside a saved
// document) and the importing document saves and reloads.
func TestImportJavaScriptChanges(t *testing.T) {
	for _, name := range jsScenarios {
		t.Run(name, func(t *testing.T) {
			changes, doc := readJS(t, name)
			if err := crdt.CheckEncoding(changes); err != nil {
				t.Fatalf("encoding: %v", err)
			}
			infos, err := crdt.ParseChanges(changes)
			if err != nil {
				t.Fatal(err)
			}
			js, err := crdt.Load(doc, "")
			if err != nil {
				t.Fatalf("Load of the JavaScript document: %v", err)
			}

			whole := newDoc(t, actorA)
			if n, err := whole.Import(changes); n != len(infos) || err != nil {
				t.Fatalf("Import of every change = %d, %v; want %d", n, err, len(infos))
			}
			if !whole.Heads().Equal(js.Heads()) || !crdt.Equal(fields(t, whole), fields(t, js)) {
				t.Fatal("imported changes differ from the JavaScript document")
			}
			reloads(t, whole)

			one := newDoc(t, actorA)
			for i, c := range splitChunks(t, changes) {
				if n, err := one.Import(c); n != 1 || err != nil {
					t.Fatalf("Import of change %d alone = %d, %v", i, n, err)
				}
			}
			reloads(t, one)

			// A saved document, into an empty document and into one that
			// holds part of its history.
			empty := newDoc(t, actorA)
			if _, err := empty.Import(doc); err != nil {
				t.Fatalf("Import of the saved document: %v", err)
			}
			reloads(t, empty)
			half := newDoc(t, actorA)
			chunks := splitChunks(t, changes)
			for _, c := range chunks[:len(chunks)/2] {
				if _, err := half.Import(c); err != nil {
					t.Fatal(err)
				}
			}
			if n, err := half.Import(doc); n != len(chunks)-len(chunks)/2 || err != nil {
				t.Fatalf("Import of the saved document over half its history = %d, %v", n, err)
			}
			reloads(t, half)

			// Go edits on top of JavaScript's, exchanged back.
			set(t, whole, crdt.Path{"go"}, "edit")
			commit(t, whole)
			if _, err := one.Import(mustChanges(t, whole, one.Heads())); err != nil {
				t.Fatalf("Go change over JavaScript's: %v", err)
			}
			reloads(t, one)
		})
	}
}

func mustChanges(t *testing.T, d *crdt.Doc, since crdt.Heads) []byte {
	t.Helper()
	b, err := d.ChangesSince(since)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
