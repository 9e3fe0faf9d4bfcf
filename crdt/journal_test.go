package crdt_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// TestJournalMatchesAutomerge runs random histories on three documents
// (edits and commits, commits automerge-go makes on its own, bursts of
// commits, exchanges whole and partial, concurrent branches and their
// merges, resets, reloads, forks, imports of saved documents) and checks
// after every step that ChangesSince answers exactly as automerge-go's
// own walk of the history does, for recent and old versions, versions of
// other documents, arbitrary sets of held changes and unknown heads; and
// now and then that Import's incrementally kept indexes equal indexes
// built afresh. The documents keep journals of different lengths, down
// to two changes, so the journal is trimmed and restarted often.
func TestJournalMatchesAutomerge(t *testing.T) {
	runs := []uint64{1, 2, 3, 5, 8}
	steps := 100
	if testing.Short() {
		runs, steps = runs[:2], 40
	}
	var answered [3]atomic.Int64 // by automerge, from a mark, by a walk
	var overReported atomic.Int64
	t.Run("random", func(t *testing.T) {
		for _, seed := range runs {
			t.Run(fmt.Sprint(seed), func(t *testing.T) {
				t.Parallel()
				s, err := newJournalSim(seed)
				if err == nil {
					err = s.run(steps)
				}
				for i := range answered {
					answered[i].Add(s.answered[i])
				}
				overReported.Add(int64(s.overReported))
				if err != nil {
					tail := s.log[max(0, len(s.log)-25):]
					t.Fatalf("seed %d: %v\nlast operations:\n%v", seed, err, tail)
				}
			})
		}
	})
	// Each way of answering must have been exercised, or the comparison
	// proves little.
	for i, what := range []string{"by automerge-go", "from a version the document had", "by walking the journal"} {
		if answered[i].Load() == 0 {
			t.Errorf("no ChangesSince was answered %s", what)
		}
	}
	t.Logf("answered by automerge-go %d, from a version %d, by a walk %d; automerge-go returned a change since held %d times",
		answered[0].Load(), answered[1].Load(), answered[2].Load(), overReported.Load())
}

type journalSim struct {
	replicaSim
	actors   []string
	limits   []int          // each document's journal length
	versions [][]crdt.Heads // the heads each document had, in order
	resets   int
	// how often automerge-go's answer held a change since holds
	overReported int
	answered     [3]int64
}

func newJournalSim(seed uint64) (*journalSim, error) {
	s := &journalSim{
		replicaSim: replicaSim{rng: rand.New(rand.NewPCG(seed, seed^0x5bd1e995))},
		actors:     []string{actorA, actorB, actorC},
		limits:     []int{0, 5, 2},
	}
	origin, err := crdt.New(actorA)
	if err != nil {
		return s, err
	}
	if err := origin.Put(map[string]any{"c": crdt.Counter(0), "t": crdt.Text("start"), "l": []string{"x"}}); err != nil {
		return s, err
	}
	if _, err := origin.Commit("init", epoch); err != nil {
		return s, err
	}
	data, err := origin.ChangesSince(nil)
	if err != nil {
		return s, err
	}
	s.docs = []*crdt.Doc{origin}
	for _, actor := range s.actors[1:] {
		d, err := crdt.New(actor)
		if err != nil {
			return s, err
		}
		if _, err := d.Import(data); err != nil {
			return s, err
		}
		s.docs = append(s.docs, d)
	}
	s.versions = make([][]crdt.Heads, len(s.docs))
	for i, d := range s.docs {
		crdt.SetJournalLimit(d, s.limits[i])
		s.versions[i] = append(s.versions[i], d.Heads())
	}
	return s, nil
}

func (s *journalSim) run(steps int) error {
	for step := range steps {
		i := s.rng.IntN(len(s.docs))
		if err := s.step(i); err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
		for k, d := range s.docs {
			s.versions[k] = append(s.versions[k], d.Heads())
		}
		for _, k := range []int{i, s.rng.IntN(len(s.docs))} {
			for range 2 {
				if err := s.check(k); err != nil {
					return fmt.Errorf("step %d: document %d: %w", step, k, err)
				}
			}
		}
		if step%10 == 9 {
			for k, d := range s.docs {
				if err := crdt.CheckIndexes(d); err != nil {
					return fmt.Errorf("step %d: document %d: %w", step, k, err)
				}
			}
		}
	}
	return nil
}

// step does one random thing to document i.
func (s *journalSim) step(i int) error {
	d := s.docs[i]
	j := (i + 1 + s.rng.IntN(len(s.docs)-1)) % len(s.docs)
	switch r := s.rng.IntN(20); {
	case r < 7: // edits, committed
		for range 1 + s.rng.IntN(3) {
			if err := s.edit(i); err != nil {
				return err
			}
		}
		_, err := d.Commit("", epoch)
		return err
	case r == 7: // an edit automerge-go commits on its own, when read
		if err := s.edit(i); err != nil {
			return err
		}
		s.logf("%d: heads (implicit commit)", i)
		d.Heads()
		return nil
	case r == 8: // a burst of commits, sometimes past what a walk follows
		n := 1 + s.rng.IntN(8)
		if s.rng.IntN(4) == 0 {
			n = 60 + s.rng.IntN(10)
		}
		s.logf("%d: %d commits", i, n)
		for k := range n {
			if err := d.Set(crdt.Path{"burst"}, k); err != nil {
				return err
			}
			if _, err := d.Commit("", epoch); err != nil {
				return err
			}
		}
		return nil
	case r < 13:
		return s.send(i, j, s.rng.IntN(3) > 0)
	case r == 13: // changes since an older version of i: may miss dependencies
		vs := s.versions[i]
		since := vs[s.rng.IntN(len(vs))]
		data, err := d.ChangesSince(since)
		if errors.Is(err, crdt.ErrUnknownHeads) {
			return nil // i was reset past it
		}
		if err != nil {
			return err
		}
		s.logf("%d -> %d: changes since an older version (%d bytes)", i, j, len(data))
		if _, err := s.docs[j].Import(data); err != nil && !errors.Is(err, crdt.ErrMissingDeps) {
			return err
		}
		return nil
	case r == 14: // back to an older version
		vs := s.versions[i]
		at := vs[s.rng.IntN(len(vs))]
		s.logf("%d: reset to %v", i, at)
		if err := d.Reset(at); err != nil {
			if errors.Is(err, crdt.ErrUnknownHeads) {
				return nil
			}
			return err
		}
		// Its own dropped changes may be held elsewhere: new ones must
		// not reuse their sequence numbers.
		s.resets++
		s.actors[i] = fmt.Sprintf("%02x%04x", i, s.resets)
		return d.SetActor(s.actors[i])
	case r == 15: // saved and loaded again
		s.logf("%d: reload", i)
		l, err := crdt.Load(d.Save(), s.actors[i])
		if err != nil {
			return err
		}
		crdt.SetJournalLimit(l, s.limits[i])
		s.docs[i] = l
		return nil
	case r == 16: // replaced by a fork of itself
		s.logf("%d: fork", i)
		f, err := d.Fork(nil)
		if err != nil {
			return err
		}
		crdt.SetJournalLimit(f, s.limits[i])
		s.docs[i] = f
		return nil
	case r == 17: // a merge commit of concurrent branches
		s.logf("%d: empty commit", i)
		return d.CommitEmpty("", epoch)
	default: // a saved document imported whole
		s.logf("%d -> %d: import a saved document", j, i)
		_, err := d.Import(s.docs[j].Save())
		return err
	}
}

// check compares ChangesSince with the changes of document k that are
// not ancestors of one random version, and with automerge-go's answer.
func (s *journalSim) check(k int) error {
	d := s.docs[k]
	all, err := crdt.SlowChangesSince(d, nil)
	if err != nil {
		return err
	}
	history, err := crdt.ParseChanges(all)
	if err != nil {
		return err
	}
	var since crdt.Heads
	switch s.rng.IntN(6) {
	case 0: // a recent version of k
		vs := s.versions[k]
		since = vs[len(vs)-1-s.rng.IntN(min(len(vs), 8))]
	case 1: // any version of any document
		vs := s.versions[s.rng.IntN(len(s.versions))]
		since = vs[s.rng.IntN(len(vs))]
	case 2, 3: // changes k holds, picked at random, not necessarily a version
		for range 1 + s.rng.IntN(3) {
			since = append(since, history[s.rng.IntN(len(history))].Hash)
		}
	case 4: // the current heads, and one change k does not hold
		since = append(d.Heads(), crdt.Hash{byte(s.rng.IntN(256)), 1})
	default: // nothing: the whole history
	}
	slow, werr := crdt.SlowChangesSince(d, since)
	answer := ""
	if werr == nil {
		answer = crdt.JournalAnswer(d, since)
	}
	got, gerr := d.ChangesSince(since)
	switch {
	case errors.Is(werr, crdt.ErrUnknownHeads) != errors.Is(gerr, crdt.ErrUnknownHeads):
		return fmt.Errorf("ChangesSince(%v): error %v, automerge-go's %v", since, gerr, werr)
	case werr != nil:
		if errors.Is(werr, crdt.ErrUnknownHeads) {
			return nil
		}
		return werr
	case gerr != nil:
		return gerr
	}
	// What it must be: the changes that are not ancestors of since.
	deps := make(map[crdt.Hash][]crdt.Hash, len(history))
	for _, c := range history {
		deps[c.Hash] = c.Deps
	}
	old := map[crdt.Hash]bool{}
	for stack := slices.Clone(since); len(stack) > 0; {
		h := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if !old[h] {
			old[h] = true
			stack = append(stack, deps[h]...)
		}
	}
	var want []crdt.Hash
	for _, c := range history {
		if !old[c.Hash] {
			want = append(want, c.Hash)
		}
	}
	// automerge-go's answer is that, in its order, but for changes with
	// no operations, which its vector clock cannot always place: it may
	// also return one that since holds (harmless: Import ignores it).
	slowChs, err := crdt.ParseChanges(slow)
	if err != nil {
		return err
	}
	empty, err := crdt.EmptyChanges(slow)
	if err != nil {
		return err
	}
	var slowWant []crdt.Hash
	for _, c := range slowChs {
		if !old[c.Hash] || !empty[c.Hash] {
			slowWant = append(slowWant, c.Hash)
		}
	}
	if !slices.Equal(slowWant, want) {
		return fmt.Errorf("ChangesSince(%v): automerge-go's answer %v, less what since holds, is not %v", since, slowWant, want)
	}
	if len(slowChs) != len(want) {
		s.overReported++
	}
	if answer == "" {
		s.answered[0]++
		if !bytes.Equal(got, slow) {
			return fmt.Errorf("ChangesSince(%v) differs from automerge-go's answer", since)
		}
		return nil
	}
	if answer == "mark" {
		s.answered[1]++
	} else {
		s.answered[2]++
	}
	// From the journal: exactly those, each after its dependencies.
	chs, err := crdt.ParseChanges(got)
	if err != nil {
		return err
	}
	gotHashes := make([]crdt.Hash, len(chs))
	for i, c := range chs {
		gotHashes[i] = c.Hash
		for _, dep := range c.Deps {
			if !old[dep] && !slices.Contains(gotHashes[:i], dep) {
				return fmt.Errorf("ChangesSince(%v) (%s): change %s comes before its dependency %s", since, answer, c.Hash, dep)
			}
		}
	}
	sorted := func(hs []crdt.Hash) []crdt.Hash {
		return slices.SortedFunc(slices.Values(hs), func(a, b crdt.Hash) int { return bytes.Compare(a[:], b[:]) })
	}
	if !slices.Equal(sorted(gotHashes), sorted(want)) {
		return fmt.Errorf("ChangesSince(%v) (%s): %d changes %v, want %d %v", since, answer, len(gotHashes), gotHashes, len(want), want)
	}
	return nil
}

// TestChangesSinceCostsTheChange checks that the calls made for each
// small change (ChangesSince the heads before it, after a commit; Import
// of another actor's change, after a local commit) do not walk the
// history, as automerge-go's Changes(since) does.
func TestChangesSinceCostsTheChange(t *testing.T) {
	d := newDoc(t, actorA)
	for i := range 50 {
		set(t, d, crdt.Path{fmt.Sprint("f", i%5)}, i)
		commit(t, d)
	}
	d, err := crdt.Load(d.Save(), actorA)
	if err != nil {
		t.Fatal(err)
	}
	src, err := crdt.Load(d.Save(), actorB)
	if err != nil {
		t.Fatal(err)
	}
	// The first Import indexes the history: that walk is expected.
	set(t, src, crdt.Path{"g"}, -1)
	commit(t, src)
	if _, err := d.Import(crdt.LastChange(src)); err != nil {
		t.Fatal(err)
	}
	walks := crdt.HistoryWalks(d)
	for i := range 20 {
		before := d.Heads()
		set(t, d, crdt.Path{"f0"}, -i)
		commit(t, d)
		data, err := d.ChangesSince(before)
		if err != nil {
			t.Fatal(err)
		}
		if err := sameAsAutomerge(d, before, data); err != nil {
			t.Fatal(err)
		}
		set(t, src, crdt.Path{"g"}, i)
		commit(t, src)
		if n, err := d.Import(crdt.LastChange(src)); n != 1 || err != nil {
			t.Fatalf("Import = %d, %v", n, err)
		}
	}
	if got := crdt.HistoryWalks(d) - walks; got != 0 {
		t.Errorf("%d walks of the history for 20 commits and imports, want 0", got)
	}
	if err := crdt.CheckIndexes(d); err != nil {
		t.Fatal(err)
	}
}

// sameAsAutomerge checks data against automerge-go's answer for since.
func sameAsAutomerge(d *crdt.Doc, since crdt.Heads, data []byte) error {
	want, err := crdt.SlowChangesSince(d, since)
	if err != nil {
		return err
	}
	if !bytes.Equal(data, want) {
		return fmt.Errorf("ChangesSince(%v) = %d bytes, automerge-go's %d", since, len(data), len(want))
	}
	return nil
}

// TestJournalBounds checks the journal's limits: past its length the
// older changes are answered by automerge-go, still correctly, and more
// commits than a walk follows between two uses start it again.
func TestJournalBounds(t *testing.T) {
	d := newDoc(t, actorA)
	crdt.SetJournalLimit(d, 4)
	var versions []crdt.Heads
	for i := range 10 {
		versions = append(versions, d.Heads())
		set(t, d, crdt.Path{"f"}, i)
		commit(t, d)
		if _, err := d.ChangesSince(versions[i]); err != nil { // journal used after each commit
			t.Fatal(err)
		}
	}
	if n := crdt.JournalLen(d); n > 4 {
		t.Errorf("journal holds %d changes, limit 4", n)
	}
	for back, want := range map[int]string{1: "mark", 2: "mark", 9: ""} {
		since := versions[len(versions)-back]
		if got := crdt.JournalAnswer(d, since); got != want {
			t.Errorf("%d changes back: answered %q, want %q", back, got, want)
		}
		data, err := d.ChangesSince(since)
		if err != nil {
			t.Fatal(err)
		}
		if err := sameAsAutomerge(d, since, data); err != nil {
			t.Errorf("%d changes back: %v", back, err)
		}
	}

	// Commits the journal does not see are found by walking back from the
	// heads, up to a point.
	for _, n := range []int{3, 100} {
		d := newDoc(t, actorA)
		set(t, d, crdt.Path{"f"}, -1)
		commit(t, d)
		since := d.Heads()
		for i := range n {
			set(t, d, crdt.Path{"f"}, i)
			commit(t, d)
		}
		want := "mark"
		if n > 64 {
			want = ""
		}
		if got := crdt.JournalAnswer(d, since); got != want {
			t.Errorf("after %d unseen commits: answered %q, want %q", n, got, want)
		}
		data, err := d.ChangesSince(since)
		if err != nil {
			t.Fatal(err)
		}
		if err := sameAsAutomerge(d, since, data); err != nil {
			t.Errorf("after %d unseen commits: %v", n, err)
		}
	}
}

// TestImportDocumentAfterEmptyChange imports a saved document into one
// whose history automerge-go's Changes(since) misreads: a change with no
// operations shares its operation counter with the change its author made
// before, and automerge-go's vector clock may then count it as not yet
// held. Import used that answer to check what a document chunk added, and
// refused the import as corrupt.
func TestImportDocumentAfterEmptyChange(t *testing.T) {
	for try := range 64 {
		a := newDoc(t, actorA)
		set(t, a, crdt.Path{"x"}, 1)
		commit(t, a)
		b := fork(t, a, actorB)
		set(t, b, crdt.Path{"y"}, 1)
		if _, err := b.Commit("", epoch.Add(time.Duration(try)*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if err := a.CommitEmpty("", epoch); err != nil {
			t.Fatal(err)
		}
		sendSince(t, b, a) // a's heads: its empty change and b's
		// Only some hashes make automerge-go's walk meet the change before
		// the empty one: try until one does.
		if held, err := crdt.SlowChangesSince(a, a.Heads()); err != nil || len(held) == 0 {
			continue
		}
		c := fork(t, a, actorC)
		set(t, c, crdt.Path{"z"}, 1)
		commit(t, c)
		before := stateOf(t, a)
		n, err := a.Import(c.Save())
		if n != 1 || err != nil {
			before.check(t, a, "refused Import")
			t.Fatalf("Import of a saved document = %d, %v; want 1 new change", n, err)
		}
		if got := get(t, a, "z"); got != int64(1) {
			t.Fatalf("z = %#v", got)
		}
		if err := crdt.CheckIndexes(a); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("no history made automerge-go misread an empty change")
}

// TestMemSize checks that memSize counts the operation index and the
// journal: a document's estimate grows as its first Import indexes its
// history, and stays near what BenchmarkIndexMemory measures per
// operation.
func TestMemSize(t *testing.T) {
	d := newDoc(t, actorA)
	for i := range 1000 {
		set(t, d, crdt.Path{fmt.Sprint("f", i%10)}, i)
		commit(t, d)
	}
	d, err := crdt.Load(d.Save(), actorA)
	if err != nil {
		t.Fatal(err)
	}
	unindexed := crdt.MemSize(d)
	if unindexed > 10_000 {
		t.Errorf("memSize of a loaded, unindexed document = %d", unindexed)
	}
	src := fork(t, d, actorB)
	set(t, src, crdt.Path{"g"}, 1)
	commit(t, src)
	if _, err := d.Import(crdt.LastChange(src)); err != nil {
		t.Fatal(err)
	}
	ops := crdt.IndexedOps(d)
	perOp := float64(crdt.MemSize(d)-unindexed) / float64(ops)
	if ops < 1000 || perOp < 100 || perOp > 300 {
		t.Errorf("memSize grew by %.0f bytes per indexed operation (%d operations)", perOp, ops)
	}
}

// TestJournalKeepsPayloads: the changes a document made or imported
// lately are exported and indexed from the payloads its journal keeps,
// without copying each out of Automerge again, and the bytes are the ones
// Automerge exports (checked against a document that has no journal, a
// reload). Imported compressed chunks are kept as the plain change.
func TestJournalKeepsPayloads(t *testing.T) {
	a, b := newDoc(t, actorA), newDoc(t, actorB)
	edit := func(d *crdt.Doc, field string, v int64) {
		t.Helper()
		if err := d.Set(crdt.Path{field}, v); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Commit("", epoch); err != nil {
			t.Fatal(err)
		}
	}
	edit(a, "x", 0)
	shared, err := a.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Import(shared); err != nil {
		t.Fatal(err)
	}
	base := a.Heads()
	for i := range 5 {
		edit(a, "x", int64(i+1))
		edit(b, "y", int64(i+1))
	}
	// b's own commits, then a's changes imported, one of them compressed.
	fromA, err := a.ChangesSince(base)
	if err != nil {
		t.Fatal(err)
	}
	chunks := splitChunks(t, fromA)
	chunks[2] = compressChange(t, chunks[2])
	bOwn := b.Heads()
	before, walks := crdt.Lookups(b), crdt.HistoryWalks(b)
	if _, err := b.Import(bytes.Join(chunks, nil)); err != nil {
		t.Fatal(err)
	}
	edit(b, "z", 1)
	reloaded, err := crdt.Load(b.Save(), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, since := range []crdt.Heads{base, bOwn, a.Heads()} {
		if !b.Has(since[0]) {
			continue
		}
		got, err := b.ChangesSince(since)
		if err != nil {
			t.Fatal(err)
		}
		want, err := reloaded.ChangesSince(since)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("ChangesSince(%v) from the journal differs from Automerge's export", since)
		}
	}
	if n, w := crdt.Lookups(b)-before, crdt.HistoryWalks(b)-walks; n != 0 || w != 0 {
		t.Errorf("the import and the exports looked up %d changes in Automerge and walked its history %d times; want none", n, w)
	}
	if err := crdt.CheckIndexes(b); err != nil {
		t.Fatal(err)
	}
}

// TestHasRecentChangesFromJournal: a document answers Has for the changes
// it made or imported lately from its journal, without asking Automerge;
// and still answers right after a rollback drops changes the journal had
// seen, and for changes older than the journal.
func TestHasRecentChangesFromJournal(t *testing.T) {
	a, b := newDoc(t, actorA), newDoc(t, actorB)
	var aHashes []crdt.Hash
	for i := range 4 {
		if err := a.Set(crdt.Path{"x"}, int64(i)); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Commit("", epoch); err != nil {
			t.Fatal(err)
		}
		aHashes = append(aHashes, a.Heads()[0])
	}
	data, err := a.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Import(data); err != nil {
		t.Fatal(err)
	}
	if err := b.Set(crdt.Path{"y"}, int64(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Commit("", epoch); err != nil {
		t.Fatal(err)
	}
	own := b.Heads()[0]
	if _, err := b.ChangesSince(crdt.Heads{aHashes[3]}); err != nil { // the journal sees the commit
		t.Fatal(err)
	}
	before := crdt.HasLookups(b)
	for _, h := range append(slices.Clone(aHashes), own) {
		if !b.Has(h) {
			t.Fatalf("Has(%s) = false for a change the document holds", h)
		}
	}
	if n := crdt.HasLookups(b) - before; n != 0 {
		t.Errorf("Has asked Automerge %d times about changes the journal holds; want none", n)
	}
	// A change it lacks is still asked about, and is not held.
	if b.Has(crdt.Hash{1, 2, 3}) {
		t.Error("Has = true for a change no one made")
	}
	// After a reset drops the document's own change, Has says so.
	if err := b.Reset(crdt.Heads{aHashes[3]}); err != nil {
		t.Fatal(err)
	}
	if b.Has(own) {
		t.Error("Has = true for a change the reset dropped")
	}
	if !b.Has(aHashes[0]) {
		t.Error("Has = false for an old change after the reset")
	}
}

// An import asks Automerge whether it holds the stream's changes before
// the load (its tip, and the first change that builds on the document),
// and not again after the load to see that the tip arrived: the
// document's new heads say so.
func TestImportAsksOncePerBranch(t *testing.T) {
	a, b := newDoc(t, actorA), newDoc(t, actorB)
	if err := a.Set(crdt.Path{"x"}, int64(0)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Commit("", epoch); err != nil {
		t.Fatal(err)
	}
	start := a.Heads()
	first, err := a.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Import(first); err != nil {
		t.Fatal(err)
	}
	// Both edit offline: b's import of a's changes then leaves two heads.
	for i := range 4 {
		if err := a.Set(crdt.Path{"x"}, int64(i+1)); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Commit("", epoch); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Set(crdt.Path{"y"}, int64(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Commit("", epoch); err != nil {
		t.Fatal(err)
	}
	data, err := a.ChangesSince(start)
	if err != nil {
		t.Fatal(err)
	}
	before := crdt.HasLookups(b)
	n, err := b.Import(data)
	if err != nil || n != 4 {
		t.Fatalf("Import = %d, %v; want 4 new changes", n, err)
	}
	if n := crdt.HasLookups(b) - before; n != 2 {
		t.Errorf("the import asked Automerge %d times whether it holds a change; want 2 (the stream's tip and first change, before the load)", n)
	}
	if !slices.Contains(b.Heads(), a.Heads()[0]) {
		t.Fatal("a's last change is not among b's heads")
	}
}
