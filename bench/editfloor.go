package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/automerge/automerge-go"

	"github.com/ferrysync/ferry/crdt"
)

// Edit floors. W0's creation changes are the wrong yardstick for W2 and
// W3, which make single-field edits of records that already exist. Their
// floor is raw automerge-go applying those same edits: each workload's
// edits are made again outside Ferry (with crdt, as a replica's Update
// makes them, untimed), then applied with LoadIncremental, one change per
// call, into documents already holding what they build on, as a device
// applies them.

// editAt is the commit time of the floors' edits.
var editAt = time.UnixMilli(1_700_000_000_000)

// edit is one single-field change, to the document of index doc.
type edit struct {
	doc  int
	data []byte
}

// editSet is documents, loaded untimed from base, and edits applied to
// them in order.
type editSet struct {
	base  [][]byte
	edits []edit
}

// applyFloor times raw automerge-go applying each set's edits (loading
// its documents is not timed; they are freed after), once to warm up and
// then floorRuns times, and returns the floor of the median run.
func applyFloor(ctx context.Context, sets ...editSet) (Floor, error) {
	n, total := 0, int64(0)
	for _, s := range sets {
		n += len(s.edits)
		for _, e := range s.edits {
			total += int64(len(e.data))
		}
	}
	runs, err := timeRuns(ctx, func() (time.Duration, error) {
		var el time.Duration
		for _, s := range sets {
			d, err := applyEdits(s)
			if err != nil {
				return 0, err
			}
			el += d
		}
		return el, nil
	})
	if err != nil {
		return Floor{}, err
	}
	med := median(runs)
	f := Floor{Changes: n, Seconds: med.Seconds(), Bytes: total, Rate: float64(n) / med.Seconds()}
	for _, d := range runs {
		f.Runs = append(f.Runs, d.Seconds())
	}
	return f, nil
}

// applyEdits loads s's documents, then times applying its edits, and
// checks that every edit was applied: automerge-go keeps a change whose
// dependencies it lacks without applying it, and without an error.
func applyEdits(s editSet) (time.Duration, error) {
	docs := make([]*automerge.Doc, len(s.base))
	defer func() {
		for _, d := range docs {
			if d != nil {
				crdt.FreeAutomerge(d)
			}
		}
	}()
	want := make([]int, len(s.base))
	for i, b := range s.base {
		d, err := automerge.Load(b)
		if err != nil {
			return 0, fmt.Errorf("bench: edit floor, document %d: %w", i, err)
		}
		docs[i] = d
		chs, err := d.Changes()
		if err != nil {
			return 0, err
		}
		want[i] = len(chs)
	}
	for _, e := range s.edits {
		want[e.doc]++
	}
	t0 := time.Now()
	for i, e := range s.edits {
		if err := docs[e.doc].LoadIncremental(e.data); err != nil {
			return 0, fmt.Errorf("bench: edit floor, edit %d: %w", i, err)
		}
	}
	el := time.Since(t0)
	for i, d := range docs {
		chs, err := d.Changes()
		if err != nil {
			return 0, err
		}
		if len(chs) != want[i] {
			return 0, checkf("edit floor: document %d holds %d changes, want %d", i, len(chs), want[i])
		}
	}
	return el, nil
}

// editor makes single-field edits of a crdt document and returns each
// as a change.
type editor struct{ d *crdt.Doc }

func (e editor) set(field string, v any) ([]byte, error) {
	h := e.d.Heads()
	if err := e.d.Set(crdt.Path{field}, v); err != nil {
		return nil, err
	}
	if ok, err := e.d.Commit("", editAt); err != nil || !ok {
		return nil, err // !ok: the field held the value already
	}
	return e.d.ChangesSince(h)
}

// w2Floor is raw automerge-go applying W2's n edits (qty set to 0, 1,
// ...) of its one record, in order, to a document holding the record.
func w2Floor(ctx context.Context, seed uint64, n int) (Floor, error) {
	d, err := crdt.New(actorID(seed, 2))
	if err != nil {
		return Floor{}, err
	}
	defer d.Free()
	if err := d.Put(products(seed, 2, 1)[0]); err != nil {
		return Floor{}, err
	}
	if _, err := d.Commit("", editAt); err != nil {
		return Floor{}, err
	}
	s := editSet{base: [][]byte{d.Save()}}
	for i := range n {
		data, err := editor{d}.set("qty", i)
		if err != nil {
			return Floor{}, err
		}
		s.edits = append(s.edits, edit{0, data})
	}
	return applyFloor(ctx, s)
}

// w3Picker picks replica k's offline edits of W3: a record's index, a
// field and its value. offlineEdits and w3Floor draw the same sequence.
type w3Picker struct{ rng *rand.Rand }

func newW3Picker(seed uint64, k int) w3Picker {
	return w3Picker{rand.New(rand.NewPCG(seed, uint64(30+k)))}
}

func (p w3Picker) next(records int) (int, string, any) {
	i := p.rng.IntN(records)
	field, val := randomEdit(p.rng)
	return i, field, val
}

// w3Floor is the least work of W3's merge in raw automerge-go: replica
// B's offline edits applied to documents holding the shared start and A's
// edits, and A's to documents holding the start and B's, one change at a
// time, in the order they were made.
func w3Floor(ctx context.Context, cfg Config) (Floor, error) {
	m := cfg.MergeRecords
	ps := products(cfg.Seed, 3, m)
	var sides [2][]*crdt.Doc
	defer func() {
		for _, docs := range sides {
			for _, d := range docs {
				d.Free()
			}
		}
	}()
	var edits [2][]edit
	for k := range 2 {
		sides[k] = make([]*crdt.Doc, m)
		for i := range m {
			d, err := crdt.New(actorID(cfg.Seed, uint64(40+k)))
			if err != nil {
				return Floor{}, err
			}
			sides[k][i] = d
		}
	}
	// The shared start, made on A's side and loaded on B's.
	for i := range m {
		a := sides[0][i]
		if err := a.Put(ps[i]); err != nil {
			return Floor{}, err
		}
		if _, err := a.Commit("", editAt); err != nil {
			return Floor{}, err
		}
		start, err := a.ChangesSince(nil)
		if err != nil {
			return Floor{}, err
		}
		if _, err := sides[1][i].Import(start); err != nil {
			return Floor{}, err
		}
	}
	for k := range 2 {
		p := newW3Picker(cfg.Seed, k)
		for range cfg.Updates {
			i, field, val := p.next(m)
			data, err := editor{sides[k][i]}.set(field, val)
			if err != nil {
				return Floor{}, err
			}
			if data == nil {
				continue // no change, as the replica makes none either
			}
			edits[k] = append(edits[k], edit{i, data})
		}
	}
	var sets [2]editSet
	for k := range 2 {
		// Side k's documents take the other side's edits.
		for _, d := range sides[k] {
			sets[k].base = append(sets[k].base, d.Save())
		}
		sets[k].edits = edits[1-k]
	}
	return applyFloor(ctx, sets[0], sets[1])
}
