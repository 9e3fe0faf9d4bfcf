package crdt_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// TestPackedReadMatchesAutomergeGo: a document's fields read in one call
// into Automerge (PackedFields, Snapshot, and SnapshotAt at a past
// version, which no longer forks) are those automerge-go reads value by
// value, and, for a past version, those a fork at it reads. The documents
// are random edits on three replicas exchanging changes (the histories of
// TestMaterializeMatchesAutomerge), read at random points, with versions
// recorded along the way read again later.
func TestPackedReadMatchesAutomergeGo(t *testing.T) {
	seeds := []uint64{21, 22, 23, 24, 25, 26, 27, 28}
	steps := 200
	if testing.Short() {
		seeds, steps = seeds[:3], 80
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			s := &replicaSim{rng: rand.New(rand.NewPCG(seed, 78))}
			for _, actor := range []string{actorA, actorB, actorC} {
				s.docs = append(s.docs, newDoc(t, actor))
			}
			var past [3][]crdt.Heads
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
				commitAny(t, s.docs[i])
				if s.rng.IntN(4) == 0 {
					past[i] = append(past[i], s.docs[i].Heads())
				}
				if s.rng.IntN(10) == 0 {
					checkPackedRead(t, s.docs[i], past[i], s.rng, fmt.Sprintf("step %d, replica %d", step, i))
				}
			}
			for i, d := range s.docs {
				checkPackedRead(t, d, past[i], s.rng, fmt.Sprintf("end, replica %d", i))
			}
		})
	}
}

func checkPackedRead(t *testing.T, d *crdt.Doc, past []crdt.Heads, rng *rand.Rand, what string) {
	t.Helper()
	got, err := d.PackedFields()
	if err != nil {
		t.Fatal(err)
	}
	want, err := crdt.SlowPackedFields(d)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		gf, _ := crdt.UnpackFields(got, true)
		wf, _ := crdt.UnpackFields(want, true)
		t.Fatalf("%s: packed in one read\n%#v\nby automerge-go\n%#v", what, gf, wf)
	}
	s, err := d.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	ws, err := crdt.SlowSnapshot(d)
	if err != nil {
		t.Fatal(err)
	}
	sameSnapshot(t, s, ws, what)
	for range min(3, len(past)) {
		h := past[rng.IntN(len(past))]
		s, err := d.SnapshotAt(h)
		if err != nil {
			t.Fatal(err)
		}
		ws, err := crdt.SlowSnapshotAt(d, h)
		if err != nil {
			t.Fatal(err)
		}
		sameSnapshot(t, s, ws, what+", at a past version")
	}
}

func sameSnapshot(t *testing.T, got, want crdt.Snapshot, what string) {
	t.Helper()
	if got.Deleted() != want.Deleted() || !reflect.DeepEqual(got.Fields(), want.Fields()) {
		t.Fatalf("%s: snapshot (deleted %v)\n%#v\nwant (deleted %v)\n%#v", what, got.Deleted(), got.Fields(), want.Deleted(), want.Fields())
	}
}
