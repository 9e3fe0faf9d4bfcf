package crdt_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// TestConvergenceProperty runs random edits on three replicas, exchanges
// changes between random pairs in random orders (incremental, whole,
// repeated, batched), and checks that after a final exchange every replica
// holds the same heads and fields, and that every counter increment counted.
func TestConvergenceProperty(t *testing.T) {
	runs := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 42, 1234, 99991, 0xfe77, 20240601, 31337, 777, 2026}
	steps := 300
	if testing.Short() {
		runs, steps = runs[:3], 60
	}
	for _, seed := range runs {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			if err := runConvergence(seed, steps); err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
		})
	}
}

type replicaSim struct {
	rng   *rand.Rand
	docs  []*crdt.Doc
	total int64 // sum of every counter increment, on any replica
	log   []string
}

func (s *replicaSim) logf(format string, args ...any) {
	s.log = append(s.log, fmt.Sprintf(format, args...))
}

func runConvergence(seed uint64, steps int) (err error) {
	s := &replicaSim{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	defer func() {
		if err != nil {
			// The tail of the operation log, to read with the seed.
			tail := s.log[max(0, len(s.log)-20):]
			err = fmt.Errorf("%w\nlast operations:\n%v", err, tail)
		}
	}()
	origin, err := crdt.New(actorA)
	if err != nil {
		return err
	}
	// Shared starting point, so counter increments all land on one counter.
	if err := origin.Put(map[string]any{"c": crdt.Counter(0), "t": crdt.Text("start"), "l": []string{"x"}}); err != nil {
		return err
	}
	if _, err := origin.Commit("init", epoch); err != nil {
		return err
	}
	s.docs = []*crdt.Doc{origin}
	for _, actor := range []string{actorB, actorC} {
		d, err := crdt.New(actor)
		if err != nil {
			return err
		}
		data, err := origin.ChangesSince(nil)
		if err != nil {
			return err
		}
		if _, err := d.Import(data); err != nil {
			return err
		}
		s.docs = append(s.docs, d)
	}
	for step := range steps {
		if s.rng.IntN(4) == 0 {
			if err := s.exchange(); err != nil {
				return fmt.Errorf("step %d: exchange: %w", step, err)
			}
			continue
		}
		i := s.rng.IntN(len(s.docs))
		if err := s.edit(i); err != nil {
			return fmt.Errorf("step %d: edit on replica %d: %w", step, i, err)
		}
		if s.rng.IntN(3) > 0 {
			if _, err := s.docs[i].Commit(fmt.Sprint("step ", step), epoch); err != nil {
				return err
			}
		}
	}
	// Final full exchange: everyone sends to everyone, twice round.
	for range 2 {
		for i := range s.docs {
			for j := range s.docs {
				if i != j {
					if err := s.send(i, j, false); err != nil {
						return err
					}
				}
			}
		}
	}
	want := s.docs[0]
	wf, err := want.Fields()
	if err != nil {
		return err
	}
	for i, d := range s.docs[1:] {
		if !d.Heads().Equal(want.Heads()) {
			return fmt.Errorf("replica %d heads %v, replica 0 %v", i+1, d.Heads(), want.Heads())
		}
		f, err := d.Fields()
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(f, wf) || !crdt.Equal(f, wf) {
			return fmt.Errorf("replica %d fields\n%#v\nreplica 0\n%#v", i+1, f, wf)
		}
	}
	if got := wf["c"]; got != s.total {
		return fmt.Errorf("counter %#v, want %d (every increment)", got, s.total)
	}
	// And the converged state survives a save and load.
	l, err := crdt.Load(want.Save(), "")
	if err != nil {
		return err
	}
	if lf, _ := l.Fields(); !reflect.DeepEqual(lf, wf) {
		return fmt.Errorf("after Load: %#v", lf)
	}
	return nil
}

var simKeys = []string{"k0", "k1", "k2", "k3"}

func (s *replicaSim) scalar() any {
	switch s.rng.IntN(6) {
	case 0:
		return s.rng.Int64N(100)
	case 1:
		return s.rng.Float64()
	case 2:
		return s.rng.IntN(2) == 0
	case 3:
		return nil
	case 4:
		return []byte{byte(s.rng.IntN(256))}
	}
	return s.word()
}

func (s *replicaSim) word() string {
	words := []string{"a", "é", "😀", "xyz", " ", "ß→", "\n"}
	out := ""
	for range 1 + s.rng.IntN(3) {
		out += words[s.rng.IntN(len(words))]
	}
	return out
}

func (s *replicaSim) edit(i int) error {
	d := s.docs[i]
	switch op := s.rng.IntN(9); op {
	case 0: // set scalar
		k := simKeys[s.rng.IntN(len(simKeys))]
		v := s.scalar()
		s.logf("%d: set %s = %#v", i, k, v)
		return d.Set(crdt.Path{k}, v)
	case 1: // nested set
		k := simKeys[s.rng.IntN(len(simKeys))]
		v := s.scalar()
		s.logf("%d: set m.%s = %#v", i, k, v)
		return d.Set(crdt.Path{"m", k}, v)
	case 2: // delete a key, top-level or nested
		k := simKeys[s.rng.IntN(len(simKeys))]
		if s.rng.IntN(2) == 0 {
			s.logf("%d: delete %s", i, k)
			return d.Delete(crdt.Path{k})
		}
		s.logf("%d: delete m.%s", i, k)
		return d.Delete(crdt.Path{"m", k})
	case 3: // list insert
		l, _ := d.Get(crdt.Path{"l"})
		n := len(l.([]any))
		idx := s.rng.IntN(n + 1)
		v := s.scalar()
		s.logf("%d: insert l[%d] = %#v", i, idx, v)
		return d.InsertAt(crdt.Path{"l"}, idx, v)
	case 4: // list delete
		l, _ := d.Get(crdt.Path{"l"})
		n := len(l.([]any))
		if n == 0 {
			return nil
		}
		idx := s.rng.IntN(n)
		s.logf("%d: delete l[%d]", i, idx)
		return d.Delete(crdt.Path{"l", idx})
	case 5: // text splice
		v, _ := d.Get(crdt.Path{"t"})
		n := len([]rune(v.(string)))
		pos := s.rng.IntN(n + 1)
		del := s.rng.IntN(n - pos + 1)
		ins := s.word()
		s.logf("%d: splice t at %d del %d ins %q", i, pos, del, ins)
		return d.SpliceText(crdt.Path{"t"}, pos, del, ins)
	case 6: // counter
		delta := s.rng.Int64N(21) - 10
		s.total += delta
		s.logf("%d: increment c by %d", i, delta)
		return d.Increment(crdt.Path{"c"}, delta)
	case 7: // whole-value writes of the text and the list (minimal diffs)
		v, _ := d.Get(crdt.Path{"t"})
		txt := []rune(v.(string))
		if len(txt) > 0 {
			txt[s.rng.IntN(len(txt))] = 'Z'
		}
		txt = append([]rune(s.word()), txt...)
		lv, _ := d.Get(crdt.Path{"l"})
		l := slices.Clone(lv.([]any))
		if len(l) > 0 && s.rng.IntN(2) == 0 {
			at := s.rng.IntN(len(l))
			l = slices.Delete(l, at, min(len(l), at+1+s.rng.IntN(2)))
		}
		l = slices.Insert(l, s.rng.IntN(len(l)+1), s.scalar())
		l = append(l, s.scalar())
		s.logf("%d: put t = %q, l = %#v", i, string(txt), l)
		return d.Put(map[string]any{"t": string(txt), "l": l})
	default: // Put of a struct-like map touching several fields
		m := map[string]any{simKeys[s.rng.IntN(len(simKeys))]: s.scalar()}
		if s.rng.IntN(2) == 0 {
			m["m"] = map[string]any{"k0": s.scalar()}
		}
		s.logf("%d: put %#v", i, m)
		return d.Put(m)
	}
}

// exchange moves changes between a random pair, in one of several ways.
func (s *replicaSim) exchange() error {
	i := s.rng.IntN(len(s.docs))
	j := (i + 1 + s.rng.IntN(len(s.docs)-1)) % len(s.docs)
	if err := s.send(i, j, s.rng.IntN(2) == 0); err != nil {
		return err
	}
	if s.rng.IntN(2) == 0 {
		return s.send(j, i, true)
	}
	return nil
}

// send imports into docs[j] what docs[i] has. With incremental, it asks for
// the changes since j's heads (falling back to everything when j holds
// changes i has not seen), and sometimes imports the bytes twice.
func (s *replicaSim) send(i, j int, incremental bool) error {
	from, to := s.docs[i], s.docs[j]
	var data []byte
	var err error
	if incremental {
		data, err = from.ChangesSince(to.Heads())
		if errors.Is(err, crdt.ErrUnknownHeads) {
			data, err = from.ChangesSince(nil)
		}
	} else {
		data, err = from.ChangesSince(nil)
	}
	if err != nil {
		return fmt.Errorf("ChangesSince %d -> %d: %w", i, j, err)
	}
	s.logf("send %d -> %d (%d bytes)", i, j, len(data))
	if _, err := to.Import(data); err != nil {
		return fmt.Errorf("Import %d -> %d: %w", i, j, err)
	}
	if s.rng.IntN(5) == 0 {
		if n, err := to.Import(data); n != 0 || err != nil {
			return fmt.Errorf("repeated Import %d -> %d = %d, %w", i, j, n, err)
		}
	}
	return nil
}
