package badgerstore

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// changes makes Automerge changes as a device would.
type changes struct {
	t   *testing.T
	doc *crdt.Doc
	at  crdt.Heads
}

func newChanges(t *testing.T, actor string) *changes {
	d, err := crdt.New(actor)
	if err != nil {
		t.Fatal(err)
	}
	return &changes{t: t, doc: d}
}

// edit sets fields and returns the new changes since the last edit.
func (e *changes) edit(fields map[string]any) []byte {
	e.t.Helper()
	if err := e.doc.Put(fields); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.doc.Commit("", time.Time{}); err != nil {
		e.t.Fatal(err)
	}
	b, err := e.doc.ChangesSince(e.at)
	if err != nil {
		e.t.Fatal(err)
	}
	e.at = e.doc.Heads()
	return b
}

// noise is n random letters: text that does not compress.
func noise(rng *rand.Rand, n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[rng.IntN(len(letters))]
	}
	return string(b)
}

// CheckCompaction through a read-only store, as ferry inspect runs it:
// it finds a record whose stored changes do not load, passes the one
// that does, and changes nothing in the folder.
func TestCheckCompactionReadOnly(t *testing.T) {
	dir := t.TempDir()
	s := bsOpen(t, dir, &Options{GCInterval: -1})
	rng := rand.New(rand.NewPCG(11, 12))
	ed := newChanges(t, "ac01")
	var heads crdt.Heads
	for range 2 {
		ch := ed.edit(map[string]any{"pad": noise(rng, 3000)})
		bsAppend(t, s, 0, time.Now(), relay.Entry{Record: "good", Base: heads, Changes: ch, Hashes: ed.doc.Heads(), Heads: ed.doc.Heads()})
		heads = ed.doc.Heads()
	}
	// The store takes any bytes; the relay validates before it appends.
	bad := bsEntry("bad", nil, noise(rng, 3000))
	bsAppend(t, s, 0, time.Now(), bad)
	bsAppend(t, s, 0, time.Now(), relay.Entry{Record: "bad", Base: bad.Heads, Changes: []byte(noise(rng, 3000)), Hashes: bad.Heads, Heads: crdt.Heads{crdt.Hash{1}}})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	before := dirState(t, dir)
	ro, err := OpenReadOnly(dir)
	if err != nil {
		t.Fatal(err)
	}
	fails, err := relay.CheckCompaction(context.Background(), ro)
	if err != nil {
		t.Fatal(err)
	}
	if len(fails) != 1 || fails[0].Record != "bad" || !errors.Is(fails[0].Err, relay.ErrStoreDamaged) {
		t.Fatalf("CheckCompaction = %+v, want bad alone", fails)
	}
	t.Log(fails[0].Err)
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}
	checkUntouched(t, dir, before)
}
