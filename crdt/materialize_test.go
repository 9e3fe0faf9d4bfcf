package crdt_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// TestMaterializeMatchesAutomerge: a deferred document reads its fields
// and tombstone from its changes in Go (without building its Automerge
// document), and they are the ones Automerge reads from the same history.
// The histories are random edits on three replicas exchanging changes
// (concurrent sets, deletes, list inserts at one place, text splices,
// counters), plus tombstones, nested lists and maps, and every scalar
// kind; each replica's whole history is read at random points and at the
// end.
func TestMaterializeMatchesAutomerge(t *testing.T) {
	seeds := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	steps := 240
	if testing.Short() {
		seeds, steps = seeds[:4], 80
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			randomHistories(t, seed, 77, steps, func(s *replicaSim, i int, end bool, what string) {
				if end || s.rng.IntN(20) == 0 {
					checkMaterialized(t, s.docs[i], what)
				}
			})
		})
	}
}

// randomHistories makes random edits on three replicas that exchange
// changes (replicaSim's, plus tombstones, nested lists and maps, and the
// scalar kinds replicaSim does not make), committing most of them, and
// calls check after each step with the replica it edited, and at the end
// with each replica (end set).
func randomHistories(t *testing.T, seed, stream uint64, steps int, check func(s *replicaSim, i int, end bool, what string)) {
	t.Helper()
	s := &replicaSim{rng: rand.New(rand.NewPCG(seed, stream))}
	for _, actor := range []string{actorA, actorB, actorC} {
		s.docs = append(s.docs, newDoc(t, actor))
	}
	for i, d := range s.docs {
		if err := d.Put(map[string]any{"c": crdt.Counter(int64(i)), "t": crdt.Text("start"), "l": []any{"x"}}); err != nil {
			t.Fatal(err)
		}
		commit(t, d)
	}
	for step := range steps {
		i := s.rng.IntN(len(s.docs))
		var err error
		switch s.rng.IntN(12) {
		case 0, 1:
			err = s.exchange()
		case 2:
			err = s.docs[i].SetDeleted(s.rng.IntN(2) == 0)
		case 3:
			err = s.docs[i].Set(crdt.Path{simKeys[s.rng.IntN(len(simKeys))]}, s.otherScalar())
		case 4:
			err = s.docs[i].Set(crdt.Path{"n"}, []any{map[string]any{"a": s.scalar(), "b": []any{s.scalar(), crdt.Text(s.word())}}, []any{s.scalar()}})
		default:
			err = s.edit(i)
		}
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if s.rng.IntN(3) > 0 {
			commitAny(t, s.docs[i])
		}
		check(s, i, false, fmt.Sprintf("step %d, replica %d", step, i))
	}
	for i, d := range s.docs {
		commitAny(t, d)
		check(s, i, true, fmt.Sprintf("end, replica %d", i))
	}
}

// commitAny commits what d holds uncommitted, if anything.
func commitAny(t *testing.T, d *crdt.Doc) {
	t.Helper()
	if _, err := d.Commit("", epoch); err != nil {
		t.Fatal(err)
	}
}

// otherScalar is a scalar of the kinds replicaSim.scalar does not make.
func (s *replicaSim) otherScalar() any {
	switch s.rng.IntN(4) {
	case 0:
		return s.rng.Uint64()
	case 1:
		return time.UnixMilli(s.rng.Int64N(1 << 42)).UTC()
	case 2:
		return crdt.Counter(s.rng.Int64N(100) - 50)
	}
	return -s.rng.Int64()
}

// checkMaterialized compares d's read model with a deferred document's
// holding d's whole history as changes.
func checkMaterialized(t *testing.T, d *crdt.Doc, what string) {
	t.Helper()
	data, err := d.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	def, err := crdt.NewDeferredAs(actorC)
	if err != nil {
		t.Fatal(err)
	}
	defer def.Free()
	if _, err := def.Import(data); err != nil {
		t.Fatalf("%s: import: %v", what, err)
	}
	deleted := def.Deleted()
	got, err := def.PackedFields()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !def.Deferred() {
		t.Fatalf("%s: reading the fields built the document", what)
	}
	want, err := d.PackedFields()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		gf, _ := crdt.UnpackFields(got, true)
		wf, _ := crdt.UnpackFields(want, true)
		t.Fatalf("%s: fields read in Go\n%#v\nAutomerge's\n%#v", what, gf, wf)
	}
	if deleted != d.Deleted() {
		t.Fatalf("%s: deleted %v in Go, %v in Automerge", what, deleted, d.Deleted())
	}
}

// TestDeferredAsBuildsWithItsActor: a deferred document made for a device
// writes as the device's actor once an edit builds it, and its fields
// read in Go before are the built document's.
func TestDeferredAsBuildsWithItsActor(t *testing.T) {
	src := newDoc(t, actorA)
	set(t, src, crdt.Path{"name"}, "tea")
	commit(t, src)
	d := deferredOf(t, src, nil)
	before, err := d.PackedFields()
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Actor(); got != actorB {
		t.Fatalf("actor %q once built, want %q", got, actorB)
	}
	after, err := d.PackedFields()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatalf("fields read in Go %x, built %x", before, after)
	}
	set(t, d, crdt.Path{"name"}, "green tea")
	commit(t, d)
	if _, err := crdt.NewDeferredAs("not hex"); err == nil {
		t.Fatal("NewDeferredAs accepted an actor that is not hex")
	}
}

// TestMaterializeOverlappingStreams: a deferred document keeps each
// stream it imports whole, so one that repeats changes it holds leaves
// them in its history twice; its fields count each change once, as
// Automerge does (an increment, a list insert).
func TestMaterializeOverlappingStreams(t *testing.T) {
	src := newDoc(t, actorA)
	if err := src.Put(map[string]any{"c": crdt.Counter(1), "l": []any{"a"}}); err != nil {
		t.Fatal(err)
	}
	commit(t, src)
	first, err := src.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Increment(crdt.Path{"c"}, 2); err != nil {
		t.Fatal(err)
	}
	if err := src.InsertAt(crdt.Path{"l"}, 1, "b"); err != nil {
		t.Fatal(err)
	}
	commit(t, src)
	all, err := src.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := crdt.NewDeferredAs(actorB)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	for _, data := range [][]byte{first, all} {
		if _, err := d.Import(data); err != nil {
			t.Fatal(err)
		}
	}
	got, err := d.PackedFields()
	if err != nil {
		t.Fatal(err)
	}
	want, err := src.PackedFields()
	if err != nil {
		t.Fatal(err)
	}
	if !d.Deferred() || !bytes.Equal(got, want) {
		gf, _ := crdt.UnpackFields(got, true)
		t.Fatalf("deferred %v, fields %#v, want c 3 and l [a b]", d.Deferred(), gf)
	}
}

// TestMaterializeMutatedChanges: whatever a deferred document accepts of
// a real change mutated (bit flips, byte changes, insertions, deletions,
// copied spans, each chunk given a correct checksum as a hostile peer
// would), the fields and tombstone it reads from its changes are those
// Automerge reads from a document that took the same bytes.
func TestMaterializeMutatedChanges(t *testing.T) {
	target, payloads := richFixture(t)
	base, err := crdt.Load(target, actorC)
	if err != nil {
		t.Fatal(err)
	}
	history, err := base.ChangesSince(nil)
	base.Free()
	if err != nil {
		t.Fatal(err)
	}
	rounds := 3000
	if testing.Short() {
		rounds = 300
	}
	rng := rand.New(rand.NewPCG(2026, 12))
	accepted := 0
	for round := range rounds {
		p := bytes.Clone(payloads[rng.IntN(len(payloads))])
		for range rng.IntN(3) {
			p = mutate(rng, p)
		}
		chunk := changeChunk(p)
		def, err := crdt.NewDeferredAs(actorB)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := def.Import(history); err != nil {
			t.Fatal(err)
		}
		if _, err := def.Import(chunk); err != nil {
			def.Free()
			continue
		}
		built, err := crdt.Load(target, actorC)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := built.Import(chunk); err != nil {
			t.Fatalf("round %d: a deferred document took %x, a built one refused it: %v", round, p, err)
		}
		accepted++
		deleted := def.Deleted()
		got, err := def.PackedFields()
		if err != nil {
			t.Fatal(err)
		}
		want, err := crdt.SlowPackedFields(built)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) || deleted != built.Deleted() {
			gf, _ := crdt.UnpackFields(got, true)
			wf, _ := crdt.UnpackFields(want, true)
			t.Fatalf("round %d, change %x: read from the changes (deleted %v)\n%#v\nAutomerge's (deleted %v)\n%#v", round, p, deleted, gf, built.Deleted(), wf)
		}
		def.Free()
		built.Free()
	}
	t.Logf("%d of %d changes accepted, each read both ways", accepted, rounds)
	if accepted < rounds/10 {
		t.Fatalf("only %d of %d changes accepted: the property was hardly exercised", accepted, rounds)
	}
}

// TestDeferredReadFromChangesOnce: a deferred document's fields are read
// from its changes once; read again after another import, the document
// is built, so a record taking a stream of changes costs each change's
// apply rather than a replay of its whole history each time.
func TestDeferredReadFromChangesOnce(t *testing.T) {
	src := newDoc(t, actorA)
	set(t, src, crdt.Path{"n"}, int64(1))
	commit(t, src)
	first, err := src.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	at := src.Heads()
	set(t, src, crdt.Path{"n"}, int64(2))
	commit(t, src)
	next, err := src.ChangesSince(at)
	if err != nil {
		t.Fatal(err)
	}
	d := deferredOf(t, nil, first)
	if d.Deleted() {
		t.Fatal("deleted")
	}
	if _, err := d.PackedFields(); err != nil || !d.Deferred() {
		t.Fatalf("the first read built the document (%v)", err)
	}
	if d.Deleted() || !d.Deferred() {
		t.Fatal("the tombstone, read again with no import since, built the document")
	}
	if _, err := d.Import(next); err != nil || !d.Deferred() {
		t.Fatalf("an import built the document (%v)", err)
	}
	got, err := d.PackedFields()
	if err != nil {
		t.Fatal(err)
	}
	if d.Deferred() {
		t.Fatal("read from its changes again after an import: its whole history replayed")
	}
	want, err := src.PackedFields()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("fields %x, want %x", got, want)
	}
}

// deferredOf returns a deferred document, writing as actorB, that took
// src's whole history, or data if src is nil. The test frees it.
func deferredOf(t *testing.T, src *crdt.Doc, data []byte) *crdt.Doc {
	t.Helper()
	if src != nil {
		var err error
		if data, err = src.ChangesSince(nil); err != nil {
			t.Fatal(err)
		}
	}
	d, err := crdt.NewDeferredAs(actorB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Free)
	if _, err := d.Import(data); err != nil {
		t.Fatal(err)
	}
	return d
}
