package crdt_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// richFixture returns a saved document with maps, a list, text, a counter
// and a conflict (two actors wrote "k" concurrently), and the payloads of
// changes it lacks, each made on its own branch from it by its own actor:
// a write over the conflict (two predecessors) and a nested delete; list
// inserts, sets and deletes; text splices; a counter increment and values
// of every kind; new nested objects written in the change that makes them;
// a record delete.
func richFixture(t testing.TB) (saved []byte, payloads [][]byte) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	origin := newDoc(t, actorA)
	must(origin.Put(map[string]any{
		"m": map[string]any{"a": 1, "b": map[string]any{"c": "x"}},
		"l": []any{"x", "y", "z"}, "t": crdt.Text("héllo wörld"), "c": crdt.Counter(5), "k": "v",
	}))
	commit(t, origin)
	b, c := fork(t, origin, actorB), fork(t, origin, actorC)
	set(t, b, crdt.Path{"k"}, "b")
	commit(t, b)
	set(t, c, crdt.Path{"k"}, "c")
	commit(t, c)
	send(t, b, origin)
	send(t, c, origin)
	base := origin.Heads()

	branches := []func(d *crdt.Doc){
		func(d *crdt.Doc) {
			set(t, d, crdt.Path{"k"}, "resolved")
			set(t, d, crdt.Path{"m", "a"}, 2)
			must(d.Delete(crdt.Path{"m", "b"}))
		},
		func(d *crdt.Doc) {
			must(d.InsertAt(crdt.Path{"l"}, 1, "w", int64(7)))
			set(t, d, crdt.Path{"l", 0}, "X")
			must(d.Delete(crdt.Path{"l", 3}))
			must(d.InsertAt(crdt.Path{"l"}, 4, "end"))
		},
		func(d *crdt.Doc) {
			must(d.SpliceText(crdt.Path{"t"}, 1, 2, "éé🙂"))
			must(d.SpliceText(crdt.Path{"t"}, 0, 0, "中"))
			must(d.SpliceText(crdt.Path{"t"}, 5, 3, ""))
		},
		func(d *crdt.Doc) {
			must(d.Increment(crdt.Path{"c"}, -3))
			set(t, d, crdt.Path{"u"}, uint64(1)<<63)
			set(t, d, crdt.Path{"f"}, 2.5)
			set(t, d, crdt.Path{"when"}, time.UnixMilli(1_700_000_000_123).UTC())
			set(t, d, crdt.Path{"raw"}, []byte{0, 255})
			set(t, d, crdt.Path{"nil"}, nil)
			set(t, d, crdt.Path{"yes"}, true)
			set(t, d, crdt.Path{"neg"}, int64(-1)<<40)
		},
		func(d *crdt.Doc) {
			set(t, d, crdt.Path{"new"}, map[string]any{"x": []any{1, map[string]any{"y": crdt.Text("t")}}})
			set(t, d, crdt.Path{"new", "x", 0}, 2)
			must(d.SpliceText(crdt.Path{"new", "x", 1, "y"}, 1, 0, "ü"))
		},
		func(d *crdt.Doc) {
			must(d.SetDeleted(true))
			set(t, d, crdt.Path{"k"}, "gone")
		},
	}
	for i, edit := range branches {
		d := fork(t, origin, []string{"dd01", "dd02", "dd03", "dd04", "dd05", "dd06"}[i])
		edit(d)
		commit(t, d)
		delta, err := d.ChangesSince(base)
		if err != nil {
			t.Fatal(err)
		}
		chunks := splitChunks(t, delta)
		if len(chunks) != 1 {
			t.Fatalf("branch %d made %d changes", i, len(chunks))
		}
		payloads = append(payloads, crdt.ChunkPayload(chunks[0]))
	}
	return origin.Save(), payloads
}

// changeChunk frames a change payload with a correct checksum, as a
// hostile peer would.
func changeChunk(payload []byte) []byte {
	out := []byte{0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1}
	out = binary.AppendUvarint(out, uint64(len(payload)))
	out = append(out, payload...)
	fixChecksum(out)
	return out
}

// importPayload imports one change payload into the document saved in
// target and checks the property that Import's checks promise: what it
// accepts saves and loads back with the same heads and fields; what it
// refuses leaves the document as it was (heads and fields). It reports
// whether the change was accepted.
func importPayload(t *testing.T, target, payload []byte) bool {
	t.Helper()
	d, err := crdt.Load(target, actorC)
	if err != nil {
		t.Fatal(err)
	}
	heads, before := d.Heads(), fields(t, d)
	n, err := d.Import(changeChunk(payload))
	if err != nil {
		if n != 0 {
			t.Fatalf("Import failed but reported %d new changes", n)
		}
		if !errors.Is(err, crdt.ErrCorrupt) && !errors.Is(err, crdt.ErrMissingDeps) {
			t.Fatalf("Import error %v is neither ErrCorrupt nor ErrMissingDeps", err)
		}
		// A rollback may save the same history in another order, so the
		// saved bytes are not compared.
		if !d.Heads().Equal(heads) || !crdt.Equal(fields(t, d), before) {
			t.Fatal("a refused Import changed the document")
		}
		return false
	}
	checkUsable(t, d, true)
	return true
}

// FuzzImportChange imports one change, a real one mutated, into a document
// with a rich history. The chunk around it always has a correct checksum,
// so every mutation reaches the change's columns. Accepted means reloads.
func FuzzImportChange(f *testing.F) {
	target, payloads := richFixture(f)
	for _, p := range payloads {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		importPayload(t, target, payload)
	})
}

// TestImportMutatedChanges is FuzzImportChange's property over seeded
// random mutations, so every test run checks it: bit flips, byte changes,
// insertions, deletions and copied spans in real changes.
func TestImportMutatedChanges(t *testing.T) {
	target, payloads := richFixture(t)
	rounds := 4000
	if testing.Short() {
		rounds = 400
	}
	rng := rand.New(rand.NewPCG(2024, 11))
	accepted := 0
	for round := range rounds {
		p := bytes.Clone(payloads[rng.IntN(len(payloads))])
		for range 1 + rng.IntN(3) {
			p = mutate(rng, p)
		}
		if importPayload(t, target, p) {
			accepted++
		}
		if t.Failed() {
			t.Fatalf("round %d: payload %x", round, p)
		}
	}
	t.Logf("%d of %d mutated changes accepted, each reloaded", accepted, rounds)
	if accepted == 0 {
		t.Fatal("no mutation was accepted: the property was never exercised")
	}
}

func mutate(rng *rand.Rand, p []byte) []byte {
	if len(p) == 0 {
		return []byte{byte(rng.Uint32())}
	}
	i := rng.IntN(len(p))
	switch rng.IntN(6) {
	case 0:
		p[i] ^= 1 << rng.IntN(8)
	case 1:
		p[i] = byte(rng.Uint32())
	case 2:
		p[i] += byte(1 + rng.IntN(2)*254) // +1 or -1
	case 3:
		return append(p[:i:i], append([]byte{byte(rng.Uint32())}, p[i:]...)...)
	case 4:
		return append(p[:i:i], p[i+1:]...)
	case 5:
		j := rng.IntN(len(p))
		n := rng.IntN(min(8, len(p)-max(i, j)) + 1)
		copy(p[i:], p[j:j+n])
	}
	return p
}
