package badgerstore

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/storetest"
)

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
	ed := storetest.NewEditor(t, "ac01")
	var heads crdt.Heads
	for range 2 {
		ch := ed.Edit(map[string]any{"pad": noise(rng, 3000)})
		bsAppend(t, s, 0, time.Now(), relay.Entry{Record: "good", Base: heads, Changes: ch, Hashes: ed.Doc.Heads(), Heads: ed.Doc.Heads()})
		heads = ed.Doc.Heads()
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
