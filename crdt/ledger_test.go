package crdt_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// ledgerVerdict is what the Go-only check (crdt's ledger) says of data
// against the document saved as target.
func ledgerVerdict(t *testing.T, target, data []byte) (crdt.Heads, error) {
	t.Helper()
	d, err := crdt.Load(target, "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	l, err := crdt.LedgerOf(d)
	if err != nil {
		t.Fatal(err)
	}
	before := l.Heads()
	if _, err := l.Check(data); err != nil {
		if !l.Heads().Equal(before) {
			t.Fatal("a refused check changed the ledger's heads")
		}
		return nil, err
	}
	return l.Heads(), nil
}

// importVerdict is what Import says of data against the document saved as
// target.
func importVerdict(t *testing.T, target, data []byte) (crdt.Heads, error) {
	t.Helper()
	d, err := crdt.Load(target, "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	if _, err := d.Import(data); err != nil {
		return nil, err
	}
	return d.Heads(), nil
}

// The Go-only check must refuse every change Import refuses, and accept
// with the same heads what Import accepts: seeded mutations of real
// changes (as TestImportMutatedChanges), the crash corpus, cut and
// reordered streams, sequence gaps. Where it refused what Import accepts,
// the test logs it: stricter is safe, looser would store what no
// document loads.
func TestLedgerRefusesWhatImportRefuses(t *testing.T) {
	target, payloads := richFixture(t)
	type tcase struct{ target, data []byte }
	var cases []tcase
	for _, p := range payloads {
		cases = append(cases, tcase{target, changeChunk(p)})
	}
	seed := uint64(2026)
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 12))
	rounds := 1500
	if testing.Short() {
		rounds = 300
	}
	for range rounds {
		p := bytes.Clone(payloads[rng.IntN(len(payloads))])
		for range 1 + rng.IntN(3) {
			p = mutate(rng, p)
		}
		cases = append(cases, tcase{target, changeChunk(p)})
	}
	files, err := filepath.Glob("testdata/fuzz/FuzzImport/crash-*")
	if err != nil || len(files) == 0 {
		t.Fatalf("crash corpus: %v, %v", files, err)
	}
	for _, f := range files {
		cases = append(cases, tcase{target, readFuzzBytes(t, f)})
	}
	// Streams against the fixture's own history: cut, out of order, and
	// renumbered.
	d, delta := corruptFixture(t)
	saved := d.Save()
	for cut := 1; cut < len(delta); cut += 7 {
		cases = append(cases, tcase{saved, delta[:cut]})
	}
	chunks := splitChunks(t, delta)
	cases = append(cases, tcase{saved, bytes.Join([][]byte{chunks[1], chunks[0]}, nil)})
	accepted, stricter := 0, 0
	check := func(i int, target, c []byte) {
		ih, ierr := importVerdict(t, target, c)
		lh, lerr := ledgerVerdict(t, target, c)
		switch {
		case ierr != nil && lerr == nil:
			t.Fatalf("case %d: Import refused (%v), the ledger accepted: %x", i, ierr, c)
		case ierr == nil && lerr != nil:
			stricter++
			t.Logf("case %d: the ledger refused (%v) what Import accepted", i, lerr)
		case ierr == nil:
			accepted++
			if !ih.Equal(lh) {
				t.Fatalf("case %d: Import's heads %v, the ledger's %v", i, ih, lh)
			}
		case errors.Is(ierr, crdt.ErrMissingDeps) != errors.Is(lerr, crdt.ErrMissingDeps):
			t.Fatalf("case %d: Import %v, the ledger %v", i, ierr, lerr)
		}
	}
	for i, c := range cases {
		check(i, c.target, c.data)
	}
	small := newDoc(t, actorA)
	set(t, small, crdt.Path{"x"}, 1)
	commit(t, small)
	src := newDoc(t, actorB)
	send(t, small, src)
	set(t, src, crdt.Path{"y"}, 2)
	commit(t, src)
	one, err := src.ChangesSince(small.Heads())
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []byte{0, 2, 5} {
		check(-int(seq), small.Save(), withSeq(t, one, seq))
	}
	t.Logf("%d cases: %d accepted by both, %d refused by the ledger alone", len(cases)+3, accepted, stricter)
	if accepted == 0 {
		t.Fatal("nothing was accepted: the comparison was never exercised")
	}
}

// BenchmarkCheckWithoutDocument compares, in one run, what a relay pays to
// check and take in a pushed change: Import into an Automerge document
// ("import", today's push path) and the Go-only ledger ("ledger", no
// document). "create" is W4's shape, one creation change into an empty
// record (the document made and freed each time, as a relay that caches
// nothing would); "edit" one field set into a record of 1,000 changes,
// index warm.
func BenchmarkCheckWithoutDocument(b *testing.B) {
	creates := make([][]byte, 256)
	for i := range creates {
		d := newDoc(b, fmt.Sprintf("%032x", i+1))
		if err := d.Put(map[string]any{"name": fmt.Sprint("item ", i), "price": 1.5 * float64(i), "qty": i, "cat": "c", "sku": fmt.Sprint("s", i)}); err != nil {
			b.Fatal(err)
		}
		commit(b, d)
		data, err := d.ChangesSince(nil)
		if err != nil {
			b.Fatal(err)
		}
		creates[i] = data
		d.Free()
	}
	b.Run("create/import", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			d, err := crdt.New("")
			if err != nil {
				b.Fatal(err)
			}
			if n, err := d.Import(creates[i%len(creates)]); n != 1 || err != nil {
				b.Fatal(n, err)
			}
			_ = d.Heads()
			d.Free()
			i++
		}
	})
	b.Run("create/ledger", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			l := crdt.NewLedger()
			if n, err := l.Check(creates[i%len(creates)]); n != 1 || err != nil {
				b.Fatal(n, err)
			}
			_ = l.Heads()
			i++
		}
	})
	saved := cachedHistory(b, 1000)
	edits := func(b *testing.B) func() []byte {
		src, err := crdt.Load(saved, actorC)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(src.Free)
		i := 0
		return func() []byte {
			i++
			set(b, src, crdt.Path{fmt.Sprint("f", i%10)}, -i)
			commit(b, src)
			return crdt.LastChange(src)
		}
	}
	b.Run("edit/import", func(b *testing.B) {
		d, err := crdt.Load(saved, "")
		if err != nil {
			b.Fatal(err)
		}
		defer d.Free()
		next := edits(b)
		if err := crdt.BuildIndex(d); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			c := next()
			b.StartTimer()
			if n, err := d.Import(c); n != 1 || err != nil {
				b.Fatal(n, err)
			}
			_ = d.Heads()
		}
	})
	b.Run("edit/ledger", func(b *testing.B) {
		d, err := crdt.Load(saved, "")
		if err != nil {
			b.Fatal(err)
		}
		l, err := crdt.LedgerOf(d)
		d.Free()
		if err != nil {
			b.Fatal(err)
		}
		next := edits(b)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			c := next()
			b.StartTimer()
			if n, err := l.Check(c); n != 1 || err != nil {
				b.Fatal(n, err)
			}
			_ = l.Heads()
		}
	})
}

// A deferred document (NewDeferred) takes in what Import takes in, without
// building its Automerge document, and refuses what Import refuses; once
// built (by any method that needs it), it holds exactly what an Import
// into a document would.
func TestDeferredImport(t *testing.T) {
	saved, payloads := richFixture(t)
	origin, err := crdt.Load(saved, "")
	if err != nil {
		t.Fatal(err)
	}
	history, err := origin.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	chunks := splitChunks(t, history)
	first := chunks[0] // the record's creation
	seed := uint64(2027)
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 13))
	rounds := 600
	if testing.Short() {
		rounds = 150
	}
	accepted := 0
	for round := range rounds + 1 {
		data := first
		if round > 0 {
			p := crdt.ChunkPayload(bytes.Clone(first))
			for range 1 + rng.IntN(3) {
				p = mutate(rng, p)
			}
			data = changeChunk(p)
		}
		want := newDoc(t, actorA)
		_, ierr := want.Import(data)
		d := crdt.NewDeferred()
		n, derr := d.Import(data)
		switch {
		case ierr != nil && derr == nil:
			t.Fatalf("round %d: Import refused (%v), the deferred document took it: %x", round, ierr, data)
		case derr != nil:
			if n != 0 || len(d.Heads()) != 0 || !d.Deferred() {
				t.Fatalf("round %d: a refused import left %d changes, heads %v", round, n, d.Heads())
			}
			if ierr == nil {
				t.Logf("round %d: the deferred document refused (%v) what Import took", round, derr)
			}
		default:
			accepted++
			if !d.Heads().Equal(want.Heads()) || !d.Deferred() {
				t.Fatalf("round %d: heads %v, Import's %v (deferred %v)", round, d.Heads(), want.Heads(), d.Deferred())
			}
			got, err := crdt.Load(d.Save(), "") // Save builds it
			if err != nil || d.Deferred() || !got.Heads().Equal(want.Heads()) {
				t.Fatalf("round %d: built and reloaded: %v, heads %v (deferred %v)", round, err, got.Heads(), d.Deferred())
			}
			got.Free()
		}
		want.Free()
		d.Free()
	}
	if accepted == 0 {
		t.Fatal("nothing was accepted")
	}

	// The whole history, change by change, then the branches: the same
	// heads, membership and cost as Import's, before and after building.
	want, d := newDoc(t, actorA), crdt.NewDeferred()
	const limit = 1 << 20
	want.SetMaxOps(limit)
	d.SetMaxOps(limit)
	streams := append([][]byte{}, chunks...)
	streams = append(streams, history) // held already: nothing new
	for _, p := range payloads {
		streams = append(streams, changeChunk(p))
	}
	for i, s := range streams {
		wn, werr := want.Import(s)
		dn, derr := d.Import(s)
		if wn != dn || (werr == nil) != (derr == nil) {
			t.Fatalf("stream %d: Import %d, %v; deferred %d, %v", i, wn, werr, dn, derr)
		}
	}
	wc, _ := want.Cost()
	dc, err := d.Cost()
	if err != nil || !d.Deferred() {
		t.Fatalf("Cost: %v (deferred %v)", err, d.Deferred())
	}
	if wc.Changes != dc.Changes || wc.Ops != dc.Ops || wc.Keys != dc.Keys || wc.Objects != dc.Objects {
		t.Fatalf("cost %+v, Import's %+v", dc, wc)
	}
	for _, h := range append(want.Heads(), crdt.Hash{1}) {
		if d.Has(h) != want.Has(h) {
			t.Fatalf("Has(%s) = %v", h, d.Has(h))
		}
	}
	if !d.Heads().Equal(want.Heads()) {
		t.Fatalf("heads %v, Import's %v", d.Heads(), want.Heads())
	}
	if !crdt.Equal(fields(t, d), fields(t, want)) || d.Deferred() {
		t.Fatalf("built: fields %v, Import's %v", fields(t, d), fields(t, want))
	}
	if err := crdt.CheckIndexes(d); err != nil {
		t.Fatalf("the indexes handed over from the ledger: %v", err)
	}
	// Built, it goes on as any document.
	src := fork(t, want, actorC)
	set(t, src, crdt.Path{"after"}, 1)
	commit(t, src)
	delta, err := src.ChangesSince(want.Heads())
	if err != nil {
		t.Fatal(err)
	}
	if n, err := d.Import(delta); n != 1 || err != nil {
		t.Fatalf("import after building: %d, %v", n, err)
	}
	// The operation limit holds while deferred.
	lim := crdt.NewDeferred()
	lim.SetMaxOps(3)
	if _, err := lim.Import(first); !errors.Is(err, crdt.ErrOpLimit) {
		t.Fatalf("over the operation limit: %v, want ErrOpLimit", err)
	}
}

// A deferred document whose changes do not load (which only a defect in
// Import's checks could let in) fails Build with ErrCorrupt and stays
// deferred, Import of a whole document reports it too, and any other
// method that needs the document panics rather than run on without them.
func TestDeferredBuildFailure(t *testing.T) {
	src := newDoc(t, actorA)
	set(t, src, crdt.Path{"x"}, 1)
	commit(t, src)
	data, err := src.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	d := crdt.NewDeferred()
	if _, err := d.Import(data); err != nil {
		t.Fatal(err)
	}
	heads := d.Heads()
	crdt.SpoilDeferred(d, []byte("not automerge"))
	if err := d.Build(); !errors.Is(err, crdt.ErrCorrupt) || !d.Deferred() || !d.Heads().Equal(heads) {
		t.Fatalf("Build = %v, deferred %v, heads %v", err, d.Deferred(), d.Heads())
	}
	other := newDoc(t, actorB)
	set(t, other, crdt.Path{"y"}, 2)
	commit(t, other)
	if _, err := d.Import(other.Save()); !errors.Is(err, crdt.ErrCorrupt) {
		t.Fatalf("Import of a whole document = %v, want ErrCorrupt", err)
	}
	defer func() {
		if r, _ := recover().(error); !errors.Is(r, crdt.ErrCorrupt) {
			t.Fatalf("Save panicked with %v, want ErrCorrupt", r)
		}
	}()
	d.Save()
	t.Fatal("Save of a document that does not build returned")
}

// LoadDeferred gives a deferred document holding what Load gives: the same
// heads and cost; changes imported into it are checked against its
// history (a mutated change Import refuses is refused); built, it holds
// what Import would have made.
func TestLoadDeferred(t *testing.T) {
	saved, payloads := richFixture(t)
	want, err := crdt.Load(saved, "")
	if err != nil {
		t.Fatal(err)
	}
	defer want.Free()
	d, err := crdt.LoadDeferred(saved)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	wc, _ := want.Cost()
	dc, _ := d.Cost()
	if !d.Deferred() || !d.Heads().Equal(want.Heads()) || wc.Ops != dc.Ops || wc.Changes != dc.Changes {
		t.Fatalf("deferred %v, heads %v (want %v), cost %+v (want %+v)", d.Deferred(), d.Heads(), want.Heads(), dc, wc)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i, p := range payloads {
		// A mutation of the change, then (unless both took the mutated
		// change, which takes its actor's number) the change itself.
		bad := changeChunk(mutate(rng, bytes.Clone(p)))
		_, ierr := want.Import(bad)
		_, derr := d.Import(bad)
		switch {
		case ierr != nil && derr == nil:
			t.Fatalf("payload %d mutated: Import refused it (%v), the deferred document took it", i, ierr)
		case ierr == nil && derr != nil:
			t.Fatalf("payload %d mutated: the deferred document refused (%v) what Import took", i, derr)
		case ierr == nil:
			continue
		}
		if _, err := d.Import(changeChunk(p)); err != nil {
			t.Fatalf("payload %d: %v", i, err)
		}
		if _, err := want.Import(changeChunk(p)); err != nil {
			t.Fatal(err)
		}
	}
	if !d.Deferred() || !d.Heads().Equal(want.Heads()) {
		t.Fatalf("after the imports: deferred %v, heads %v, want %v", d.Deferred(), d.Heads(), want.Heads())
	}
	if !crdt.Equal(fields(t, d), fields(t, want)) {
		t.Fatalf("built: %v, want %v", fields(t, d), fields(t, want))
	}
	if _, err := crdt.Load(d.Save(), ""); err != nil {
		t.Fatal(err)
	}
}

// LoadDeferred of changes alone (a record never compacted) checks them as
// Load does, in Go: the same heads, and what Load refuses refused.
func TestLoadDeferredChanges(t *testing.T) {
	_, delta := corruptFixture(t)
	src := newDoc(t, actorA)
	set(t, src, crdt.Path{"name"}, "lamp")
	commit(t, src)
	set(t, src, crdt.Path{"n"}, 2)
	commit(t, src)
	all, err := src.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := crdt.LoadDeferred(all)
	if err != nil || !d.Deferred() || !d.Heads().Equal(src.Heads()) {
		t.Fatalf("LoadDeferred = %v, deferred %v, heads %v, want %v", err, d.Deferred(), d.Heads(), src.Heads())
	}
	if !crdt.Equal(fields(t, d), fields(t, src)) {
		t.Fatalf("built: %v, want %v", fields(t, d), fields(t, src))
	}
	// The fixture's delta needs changes it lacks; cut, it is corrupt.
	for _, bad := range [][]byte{delta, all[:len(all)-3]} {
		_, lerr := crdt.Load(bad, "")
		if _, err := crdt.LoadDeferred(bad); lerr == nil || err == nil || errors.Is(lerr, crdt.ErrMissingDeps) != errors.Is(err, crdt.ErrMissingDeps) {
			t.Fatalf("Load = %v, LoadDeferred = %v; want both refused alike", lerr, err)
		}
	}
}

// The ledger finds what a stream holds by scanning it up to some 16
// changes and with maps past that, and keeps a record's first few changes
// in slices before maps: streams of every length across both bounds,
// whole, with a change twice, with one left out and with two swapped,
// get Import's verdict and heads, into an empty document and into one
// that holds the stream's first changes.
func TestLedgerStreamLengths(t *testing.T) {
	a, b := newDoc(t, actorA), newDoc(t, actorB)
	defer a.Free()
	defer b.Free()
	for i := range 40 {
		d := a
		if i%3 == 2 {
			d = b
		}
		set(t, d, crdt.Path{fmt.Sprint("k", i%5)}, i)
		commit(t, d)
		if i%4 == 3 {
			exchange(t, a, b)
		}
	}
	exchange(t, a, b)
	all, err := a.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	chunks := splitChunks(t, all)
	join := func(cs ...[]byte) []byte { return bytes.Join(cs, nil) }
	targets := [][]byte{nil}
	for _, held := range []int{1, 5, 12} {
		d := newDoc(t, actorA)
		if _, err := d.Import(join(chunks[:held]...)); err != nil {
			t.Fatal(err)
		}
		targets = append(targets, d.Save())
		d.Free()
	}
	compare := func(what string, target, data []byte) {
		t.Helper()
		ih, ierr := importVerdict(t, target, data)
		lh, lerr := ledgerVerdict(t, target, data)
		switch {
		case (ierr == nil) != (lerr == nil):
			t.Fatalf("%s: Import %v, the ledger %v", what, ierr, lerr)
		case ierr == nil && !ih.Equal(lh):
			t.Fatalf("%s: Import's heads %v, the ledger's %v", what, ih, lh)
		case errors.Is(ierr, crdt.ErrMissingDeps) != errors.Is(lerr, crdt.ErrMissingDeps):
			t.Fatalf("%s: Import %v, the ledger %v", what, ierr, lerr)
		}
	}
	refused := 0
	for ti, target := range targets {
		if target == nil {
			d := newDoc(t, actorA)
			target = d.Save()
			d.Free()
		}
		for n := 1; n <= len(chunks); n++ {
			cs := chunks[:n]
			compare(fmt.Sprintf("target %d, %d changes", ti, n), target, join(cs...))
			twice := append(append([][]byte{}, cs...), cs[n/2])
			compare(fmt.Sprintf("target %d, %d changes, one twice", ti, n), target, join(twice...))
			if n >= 3 {
				gap := append(append([][]byte{}, cs[:n/2]...), cs[n/2+1:]...)
				compare(fmt.Sprintf("target %d, %d changes, one left out", ti, n), target, join(gap...))
				swapped := append([][]byte{}, cs...)
				swapped[n-1], swapped[n-2] = swapped[n-2], swapped[n-1]
				compare(fmt.Sprintf("target %d, %d changes, two swapped", ti, n), target, join(swapped...))
				if _, err := importVerdict(t, target, join(gap...)); err != nil {
					refused++
				}
			}
		}
	}
	if refused == 0 {
		t.Fatal("no stream was refused: the refusals were never compared")
	}
}
