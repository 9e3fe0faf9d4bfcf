package crdt_test

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"reflect"
	"regexp"
	"runtime"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/memtest"
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
			var past [3][]crdt.Heads
			randomHistories(t, seed, 78, steps, func(s *replicaSim, i int, end bool, what string) {
				if !end && s.rng.IntN(4) == 0 {
					past[i] = append(past[i], s.docs[i].Heads())
				}
				if end || s.rng.IntN(10) == 0 {
					commitAny(t, s.docs[i])
					checkPackedRead(t, s.docs[i], past[i], s.rng, what)
				}
			})
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

// TestPackedReadEdgeCases: keys in byte order whatever their case and
// script, empty values of every kind, extreme numbers, and a nested key
// named like the tombstone (only the root's is one) read as automerge-go
// reads them, in one call and from the changes (materialize).
func TestPackedReadEdgeCases(t *testing.T) {
	d := newDoc(t, actorA)
	when := time.Date(1969, 7, 20, 20, 17, 40, 0, time.UTC)
	err := d.Put(map[string]any{
		"b": "", "a": []byte{}, "é": []any{}, "B": map[string]any{}, "ab": crdt.Text(""), "Z": int64(-1),
		"big": uint64(math.MaxUint64), "min": int64(math.MinInt64), "neg0": math.Copysign(0, -1), "inf": math.Inf(-1),
		"when": when, "c": crdt.Counter(-7), "nil": nil,
		"nested": map[string]any{crdt.TombstoneKey: true, "z": []any{map[string]any{"y": []any{"x"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	before := d.Heads()
	if err := d.SetDeleted(true); err != nil {
		t.Fatal(err)
	}
	if err := d.Increment(crdt.Path{"c"}, 3); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	checkPackedRead(t, d, []crdt.Heads{before}, rand.New(rand.NewPCG(1, 1)), "edge cases")
	checkMaterialized(t, d, "edge cases")
	s, err := d.SnapshotAt(before)
	if err != nil {
		t.Fatal(err)
	}
	if s.Deleted() || s.Fields()["c"] != crdt.Counter(-7) {
		t.Fatalf("before the delete: deleted %v, c %v", s.Deleted(), s.Fields()["c"])
	}
	if now, err := d.Snapshot(); err != nil || !now.Deleted() {
		t.Fatalf("after the delete: deleted %v (%v)", now.Deleted(), err)
	}
}

// TestPackedReadFreesItsMemory: reading fields in one call allocates in
// C (Automerge's results, the packed buffer, a past version's heads) and
// frees it all before returning: 40,000 reads of a record of 200 fields,
// now and at a past version, leave the process's resident memory within
// 32 MiB of where it was after a warm-up. A read that kept its buffer
// (some 3 KB) would add over 100 MiB. Measured in a process of its own
// (memtest).
func TestPackedReadFreesItsMemory(t *testing.T) {
	if os.Getenv("FERRY_PACKEDREAD_CHILD") == "" {
		if testing.Short() {
			t.Skip("40,000 reads in a process of its own")
		}
		out := memtest.Run(t, "FERRY_PACKEDREAD_CHILD=1")
		if m := regexp.MustCompile(`grew: .*`).Find(out); m != nil {
			t.Log(string(m))
		}
		return
	}
	d := newDoc(t, actorA)
	for i := range 200 {
		set(t, d, crdt.Path{fmt.Sprintf("field-%03d", i)}, fmt.Sprintf("value %d", i))
	}
	commit(t, d)
	past := d.Heads()
	set(t, d, crdt.Path{"field-000"}, "changed")
	commit(t, d)
	read := func(n int) {
		for i := range n {
			if i%2 == 0 {
				if _, err := d.PackedFields(); err != nil {
					t.Fatal(err)
				}
			} else if _, err := d.SnapshotAt(past); err != nil {
				t.Fatal(err)
			}
		}
	}
	read(4000)
	runtime.GC()
	start := memtest.Resident(t)
	read(40000)
	runtime.GC()
	grew := memtest.Resident(t) - start
	t.Logf("grew: %.1f MiB over 40,000 reads", float64(grew)/(1<<20))
	if grew > 32<<20 {
		t.Fatalf("resident memory grew %.1f MiB over 40,000 reads", float64(grew)/(1<<20))
	}
}
