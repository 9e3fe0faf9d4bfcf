package crdt_test

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

func TestExchangeConverges(t *testing.T) {
	a, b := newDoc(t, actorA), newDoc(t, actorB)
	set(t, a, crdt.Path{"name"}, "a")
	set(t, a, crdt.Path{"n"}, 1)
	commit(t, a)
	sendSince(t, a, b)
	set(t, a, crdt.Path{"name"}, "from a")
	commit(t, a)
	set(t, b, crdt.Path{"name"}, "from b") // concurrent: one wins, the same everywhere
	set(t, b, crdt.Path{"m"}, 2)
	commit(t, b)
	set(t, b, crdt.Path{"k"}, 3)
	commit(t, b)

	// Incremental exchange from each side's heads.
	ha, hb := a.Heads(), b.Heads()
	toB, err := a.ChangesSince(nil) // b holds changes a has not seen
	if err != nil {
		t.Fatal(err)
	}
	toA, err := b.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := b.Import(toB); err != nil || n != 1 {
		t.Fatalf("b.Import = %d, %v; want 1 new change", n, err)
	}
	if n, err := a.Import(toA); err != nil || n != 2 {
		t.Fatalf("a.Import = %d, %v; want 2 new changes", n, err)
	}
	if !a.Heads().Equal(b.Heads()) {
		t.Fatalf("heads differ: %v vs %v", a.Heads(), b.Heads())
	}
	if len(a.Heads()) != 2 {
		t.Fatalf("want two concurrent heads, got %v", a.Heads())
	}
	fa, fb := fields(t, a), fields(t, b)
	if !reflect.DeepEqual(fa, fb) {
		t.Fatalf("fields differ: %v vs %v", fa, fb)
	}
	if fa["m"] != int64(2) || fa["k"] != int64(3) || fa["n"] != int64(1) {
		t.Fatalf("merged fields: %v", fa)
	}
	for _, h := range append(ha, hb...) {
		if !a.Has(h) || !b.Has(h) {
			t.Fatalf("a merged doc lacks change %s", h)
		}
	}
	if a.Has(crdt.Hash{1}) {
		t.Fatal("Has of a made-up hash")
	}
}

func TestImportIdempotent(t *testing.T) {
	a, b := newDoc(t, actorA), newDoc(t, actorB)
	for i := range 3 {
		set(t, a, crdt.Path{"i"}, i)
		commit(t, a)
	}
	data, err := a.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := b.Import(data); n != 3 || err != nil {
		t.Fatalf("first Import = %d, %v", n, err)
	}
	before := stateOf(t, b)
	if n, err := b.Import(data); n != 0 || err != nil {
		t.Fatalf("second Import = %d, %v; want 0, nil", n, err)
	}
	before.check(t, b, "second import")
	// The same stream twice over in one call counts each change once.
	c := newDoc(t, actorC)
	if n, err := c.Import(append(bytes.Clone(data), data...)); n != 3 || err != nil {
		t.Fatalf("Import of a doubled stream = %d, %v; want 3", n, err)
	}
	// Importing into the document that made the changes is a no-op.
	if n, err := a.Import(data); n != 0 || err != nil {
		t.Fatalf("Import into the origin = %d, %v", n, err)
	}
	if n, err := a.Import(nil); n != 0 || err != nil {
		t.Fatalf("Import(nil) = %d, %v", n, err)
	}
}

func TestChangesSince(t *testing.T) {
	a := newDoc(t, actorA)
	if data, err := a.ChangesSince(nil); data != nil || err != nil {
		t.Fatalf("ChangesSince on an empty doc = %d bytes, %v", len(data), err)
	}
	set(t, a, crdt.Path{"x"}, 1)
	commit(t, a)
	h1 := a.Heads()
	set(t, a, crdt.Path{"x"}, 2)
	commit(t, a)
	if data, err := a.ChangesSince(a.Heads()); data != nil || err != nil {
		t.Fatalf("ChangesSince(current heads) = %d bytes, %v; want nil", len(data), err)
	}
	data, err := a.ChangesSince(h1)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := crdt.ParseChanges(data)
	if err != nil || len(infos) != 1 {
		t.Fatalf("ParseChanges = %v, %v", infos, err)
	}
	if !crdt.Heads([]crdt.Hash{infos[0].Hash}).Equal(a.Heads()) || !crdt.Heads(infos[0].Deps).Equal(h1) {
		t.Fatalf("change info %+v, heads %v, since %v", infos[0], a.Heads(), h1)
	}
	unknown := crdt.Heads{crdt.Hash{0xde, 0xad}}
	if _, err := a.ChangesSince(unknown); !errors.Is(err, crdt.ErrUnknownHeads) {
		t.Fatalf("ChangesSince(unknown) = %v, want ErrUnknownHeads", err)
	}
	if _, err := a.ChangesSince(append(h1, unknown...)); !errors.Is(err, crdt.ErrUnknownHeads) {
		t.Fatalf("ChangesSince(known+unknown) = %v, want ErrUnknownHeads", err)
	}
	if _, err := a.Fork(unknown); !errors.Is(err, crdt.ErrUnknownHeads) {
		t.Fatalf("Fork(unknown) = %v, want ErrUnknownHeads", err)
	}
}

func TestForkAtPastHeads(t *testing.T) {
	a := newDoc(t, actorA)
	set(t, a, crdt.Path{"v"}, "old")
	set(t, a, crdt.Path{"gone"}, true)
	commit(t, a)
	past := a.Heads()
	set(t, a, crdt.Path{"v"}, "new")
	if err := a.Delete(crdt.Path{"gone"}); err != nil {
		t.Fatal(err)
	}
	commit(t, a)
	f, err := a.Fork(past)
	if err != nil {
		t.Fatal(err)
	}
	if got := fields(t, f); !reflect.DeepEqual(got, map[string]any{"v": "old", "gone": true}) {
		t.Fatalf("fork at past heads: %v", got)
	}
	if !f.Heads().Equal(past) {
		t.Fatalf("fork heads %v, want %v", f.Heads(), past)
	}
	if f.Actor() != a.Actor() {
		t.Fatalf("fork actor %q, want %q", f.Actor(), a.Actor())
	}
	// The fork is independent.
	if err := f.SetActor(actorB); err != nil {
		t.Fatal(err)
	}
	set(t, f, crdt.Path{"v"}, "fork")
	commit(t, f)
	if got := get(t, a, "v"); got != "new" {
		t.Fatalf("editing the fork changed the original: %v", got)
	}
	// And merges back.
	send(t, f, a)
	if len(a.Heads()) != 2 {
		t.Fatalf("after merging the fork: heads %v", a.Heads())
	}
	// Fork(nil) is the current version.
	g, err := a.Fork(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !g.Heads().Equal(a.Heads()) || !reflect.DeepEqual(fields(t, g), fields(t, a)) {
		t.Fatal("Fork(nil) differs from the original")
	}
}

// A fork keeps its origin's actor: editing both makes two different changes
// with one actor and sequence number, which Automerge refuses to merge. The
// refusal must be an error that leaves the document intact.
func TestForkSameActorEditsRefused(t *testing.T) {
	a := newDoc(t, actorA)
	set(t, a, crdt.Path{"v"}, 0)
	commit(t, a)
	f, err := a.Fork(nil)
	if err != nil {
		t.Fatal(err)
	}
	set(t, a, crdt.Path{"v"}, 1)
	commit(t, a)
	set(t, f, crdt.Path{"w"}, 2)
	commit(t, f)
	before := stateOf(t, a)
	data, err := f.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Import(data); err == nil {
		t.Fatal("import of a same-actor fork's edit succeeded")
	}
	before.check(t, a, "refused same-actor import")
}

func TestSaveLoad(t *testing.T) {
	a := newDoc(t, actorA)
	if err := a.Put(sampleItem()); err != nil {
		t.Fatal(err)
	}
	commit(t, a)
	set(t, a, crdt.Path{"more"}, []any{1, "two"})
	commit(t, a)
	saved := a.Save()
	l, err := crdt.Load(saved, actorB)
	if err != nil {
		t.Fatal(err)
	}
	if l.Actor() != actorB {
		t.Errorf("loaded actor %q", l.Actor())
	}
	if !l.Heads().Equal(a.Heads()) || !reflect.DeepEqual(fields(t, l), fields(t, a)) {
		t.Fatal("Load(Save()) differs")
	}
	if !bytes.Equal(l.Save(), saved) {
		t.Error("Save(Load(Save())) differs from Save()")
	}
	// Load with no actor keeps a random one, and still works.
	if l2, err := crdt.Load(saved, ""); err != nil || !l2.Heads().Equal(a.Heads()) {
		t.Fatalf("Load with no actor: %v", err)
	}
	if _, err := crdt.Load(saved, "zz"); err == nil {
		t.Error("Load with a bad actor succeeded")
	}
	// A saved document followed by later changes loads whole.
	h := a.Heads()
	set(t, a, crdt.Path{"later"}, true)
	commit(t, a)
	delta, err := a.ChangesSince(h)
	if err != nil {
		t.Fatal(err)
	}
	l3, err := crdt.Load(append(bytes.Clone(saved), delta...), "")
	if err != nil || !l3.Heads().Equal(a.Heads()) {
		t.Fatalf("Load(saved+delta): %v", err)
	}
	// An empty input is an empty document.
	e, err := crdt.Load(nil, actorC)
	if err != nil || len(e.Heads()) != 0 || len(fields(t, e)) != 0 {
		t.Fatalf("Load(nil) = %v", err)
	}
}

// A whole saved document imports like a stream of changes: the way a fresh
// device takes a snapshot.
func TestImportWholeDocument(t *testing.T) {
	a := newDoc(t, actorA)
	set(t, a, crdt.Path{"x"}, 1)
	commit(t, a)
	set(t, a, crdt.Path{"y"}, crdt.Text("hi"))
	commit(t, a)
	h := a.Heads()
	saved := a.Save()

	e := newDoc(t, actorB)
	if n, err := e.Import(saved); n != 2 || err != nil {
		t.Fatalf("Import(Save()) into an empty doc = %d, %v; want 2", n, err)
	}
	if e.Actor() != actorB {
		t.Errorf("Import replaced the actor: %q", e.Actor())
	}
	if !e.Heads().Equal(h) || !reflect.DeepEqual(fields(t, e), fields(t, a)) {
		t.Fatal("imported document differs")
	}
	if n, err := e.Import(saved); n != 0 || err != nil {
		t.Fatalf("second Import(Save()) = %d, %v; want 0", n, err)
	}
	// Into a document with its own changes, it merges.
	o := newDoc(t, actorC)
	set(t, o, crdt.Path{"z"}, 3)
	commit(t, o)
	if n, err := o.Import(saved); n != 2 || err != nil {
		t.Fatalf("Import(Save()) into a doc with changes = %d, %v", n, err)
	}
	if got := fields(t, o); got["x"] != int64(1) || got["z"] != int64(3) {
		t.Fatalf("merged: %v", got)
	}
	// A snapshot followed by the changes after it, in one stream.
	set(t, a, crdt.Path{"x"}, 2)
	commit(t, a)
	delta, err := a.ChangesSince(h)
	if err != nil {
		t.Fatal(err)
	}
	f := newDoc(t, actorC)
	if n, err := f.Import(append(bytes.Clone(saved), delta...)); n != 3 || err != nil {
		t.Fatalf("Import(snapshot+delta) = %d, %v; want 3", n, err)
	}
	if !f.Heads().Equal(a.Heads()) {
		t.Fatal("snapshot+delta did not reach the source's heads")
	}
}

func TestHeadsEncoding(t *testing.T) {
	a, b := newDoc(t, actorA), newDoc(t, actorB)
	set(t, a, crdt.Path{"x"}, 1)
	commit(t, a)
	set(t, b, crdt.Path{"x"}, 2)
	commit(t, b)
	exchange(t, a, b)
	h := a.Heads()
	if len(h) != 2 {
		t.Fatalf("heads %v", h)
	}
	rev := crdt.Heads{h[1], h[0]}
	if !rev.Equal(h) {
		t.Error("Equal depends on order")
	}
	if got, err := crdt.HeadsFromBytes(rev.Bytes()); err != nil || !reflect.DeepEqual(got, h) {
		t.Errorf("HeadsFromBytes(Bytes()) = %v, %v", got, err)
	}
	if got, err := crdt.HeadsFromSlices(rev.Slices()); err != nil || !reflect.DeepEqual(got, h) {
		t.Errorf("HeadsFromSlices(Slices()) = %v, %v", got, err)
	}
	if _, err := crdt.HeadsFromBytes(make([]byte, 33)); !errors.Is(err, crdt.ErrCorrupt) {
		t.Errorf("HeadsFromBytes(33 bytes) = %v", err)
	}
	if _, err := crdt.HeadsFromSlices([][]byte{make([]byte, 31)}); !errors.Is(err, crdt.ErrCorrupt) {
		t.Errorf("HeadsFromSlices(31 bytes) = %v", err)
	}
	if h[0].String() == "" || len(h[0].String()) != 64 {
		t.Errorf("Hash.String() = %q", h[0].String())
	}
	if (crdt.Heads{}).Equal(h) || !(crdt.Heads{}).Equal(nil) {
		t.Error("empty heads equality")
	}
}

// A compressed change chunk (as Automerge writes for a large change: the
// DEFLATE of a change chunk's payload, with that change's checksum) frames,
// lists its hash and dependencies, and imports.
func TestImportCompressedChange(t *testing.T) {
	a := newDoc(t, actorA)
	set(t, a, crdt.Path{"x"}, 1)
	commit(t, a)
	h := a.Heads()
	set(t, a, crdt.Path{"big"}, strings.Repeat("compressible ", 100))
	commit(t, a)
	first, err := a.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	second, err := a.ChangesSince(h)
	if err != nil {
		t.Fatal(err)
	}
	first = first[:len(first)-len(second)]
	packed := compressChunk(t, second)
	infos, err := crdt.ParseChanges(packed)
	if err != nil || len(infos) != 1 || !crdt.Heads([]crdt.Hash{infos[0].Hash}).Equal(a.Heads()) || !crdt.Heads(infos[0].Deps).Equal(h) {
		t.Fatalf("ParseChanges(compressed) = %+v, %v", infos, err)
	}
	b := newDoc(t, actorB)
	before := stateOf(t, b)
	if _, err := b.Import(packed); !errors.Is(err, crdt.ErrMissingDeps) {
		t.Fatalf("compressed change without its dependency: %v, want ErrMissingDeps", err)
	}
	before.check(t, b, "compressed change without its dependency")
	if n, err := b.Import(append(bytes.Clone(first), packed...)); n != 2 || err != nil {
		t.Fatalf("Import(change + compressed change) = %d, %v", n, err)
	}
	if !b.Heads().Equal(a.Heads()) || !reflect.DeepEqual(fields(t, b), fields(t, a)) {
		t.Fatal("compressed change imported differently")
	}
	// A flipped bit inside the compressed data is caught.
	bad := bytes.Clone(packed)
	bad[len(bad)-3] ^= 0x40
	if _, err := crdt.ParseChanges(bad); !errors.Is(err, crdt.ErrCorrupt) {
		t.Fatalf("corrupt compressed chunk: %v, want ErrCorrupt", err)
	}
}

// compressChunk turns one change chunk into Automerge's compressed form.
func compressChunk(t *testing.T, chunk []byte) []byte {
	t.Helper()
	hdr := chunkHeaderLen(chunk)
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(chunk[hdr:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out := append(bytes.Clone(chunk[:8]), 2)
	out = binary.AppendUvarint(out, uint64(buf.Len()))
	return append(out, buf.Bytes()...)
}
