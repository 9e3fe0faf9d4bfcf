package crdt

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// An index whose layers are pushed, merged and packed answers every lookup
// as one map of all its operations does: present operations (the latest
// of two with one ID), absent ones in the gaps between runs, before and
// after them, and of actors it never saw; and it iterates exactly them.
func TestPackedLayersAnswerAsMaps(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4, 5} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			actors := []string{"", "\x01", "\xaa\xbb", "actor-three", "\x00\x00"}
			props := []string{"", "id", "title", "done", "tags", "ü"}
			want := map[opRef]opRec{}
			next := map[string]uint64{}
			var top *opLayer
			packed := false
			for round := range 40 {
				l := newLayer(top)
				// Layers of every size, so that some are packed alone,
				// some packed by a merge, and some stay maps.
				size := []int{1, 5, 40, 300, packMin, 3000}[rng.IntN(6)]
				for range size {
					a := actors[rng.IntN(len(actors))]
					if rng.IntN(4) == 0 {
						next[a] += uint64(1 + rng.IntN(5)) // a gap: deletes are never held
					}
					next[a]++
					k := opRef{actor: a, ctr: next[a]}
					if rng.IntN(50) == 0 && len(want) > 0 {
						// One ID again, in a later layer: the later wins.
						for old := range want {
							k = old
							break
						}
					}
					v := opRec{
						obj:    opRef{actor: actors[rng.IntN(len(actors))], ctr: uint64(rng.IntN(1000))},
						prop:   props[rng.IntN(len(props))],
						kind:   keyKind(rng.IntN(3)),
						action: uint8(rng.IntN(12)),
						insert: rng.IntN(2) == 0,
					}
					if v.kind == keyElem {
						v.elem = opRef{actor: actors[rng.IntN(len(actors))], ctr: uint64(1 + rng.IntN(1<<40))}
					}
					l.ops[k] = v
					want[k] = v
					l.maxOp[k.actor] = max(l.maxOp[k.actor], k.ctr)
				}
				top = pushLayer(top, l)
				for x := top; x != nil; x = x.parent {
					packed = packed || x.packed != nil
				}
				if round%8 == 7 {
					checkLayers(t, top, want, actors, next)
				}
			}
			if !packed {
				t.Fatal("no layer was packed")
			}
		})
	}
}

func checkLayers(t *testing.T, top *opLayer, want map[opRef]opRec, actors []string, next map[string]uint64) {
	t.Helper()
	for k, v := range want {
		if got, ok := top.get(k); !ok || got != v {
			t.Fatalf("get(%x, %d) = %+v, %v; want %+v", k.actor, k.ctr, got, ok, v)
		}
	}
	for _, a := range append(actors, "never seen") {
		for c := uint64(0); c <= next[a]+2; c++ {
			k := opRef{actor: a, ctr: c}
			if _, held := want[k]; held {
				continue
			}
			if got, ok := top.get(k); ok {
				t.Fatalf("get(%x, %d) = %+v for an operation never added", a, c, got)
			}
		}
	}
	seen := map[opRef]opRec{}
	for x := top; x != nil; x = x.parent {
		x.each(func(k opRef, v opRec) {
			if _, ok := seen[k]; !ok {
				seen[k] = v
			}
		})
	}
	if len(seen) != len(want) {
		t.Fatalf("the layers hold %d operations, want %d", len(seen), len(want))
	}
}

// A packed layer takes a fraction of a map's memory, as memSize counts
// it: the estimate the relay's document cache counts deferred documents
// by.
func TestPackedLayerSize(t *testing.T) {
	l := newLayer(nil)
	for i := range 10000 {
		l.ops[opRef{actor: "\x01\x02", ctr: uint64(i + 1)}] = opRec{obj: opRef{actor: "\x01\x02", ctr: 1}, prop: "title", kind: keyProp, action: 1}
	}
	l.maxOp["\x01\x02"] = 10000
	mapSize := l.memSize()
	p := pushLayer(nil, l)
	if p.packed == nil || p.count() != 10000 {
		t.Fatalf("a layer of 10,000 operations was not packed (%d held)", p.count())
	}
	if p.memSize()*3 > mapSize {
		t.Fatalf("packed: %d bytes, as a map %d", p.memSize(), mapSize)
	}
}

// Counters that go on from one actor to the next do not make one run:
// each actor's operations are found under it alone.
func TestPackedRunsStayWithinActors(t *testing.T) {
	b := newPacker(0)
	want := map[opRef]opRec{}
	for i, a := range []string{"a", "b", "c"} {
		for c := range 3 {
			k := opRef{actor: a, ctr: uint64(3*i + c + 1)} // a: 1-3, b: 4-6, c: 7-9
			v := opRec{prop: a, action: uint8(c)}
			b.add(k, v)
			want[k] = v
		}
	}
	p := b.pack()
	for k, v := range want {
		if got, ok := p.get(k); !ok || got != v {
			t.Errorf("get(%s, %d) = %+v, %v; want %+v", k.actor, k.ctr, got, ok, v)
		}
	}
	if _, ok := p.get(opRef{actor: "a", ctr: 4}); ok {
		t.Error("a's counter 4, b's, was found under a")
	}
}
