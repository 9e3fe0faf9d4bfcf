package crdt_test

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

var checkSeed = flag.Uint64("crdt.checkseed", 0, "run TestNoFalseRefusals with only this seed")

// TestNoFalseRefusals makes random edits of every kind through the crdt API
// on three replicas that merge concurrently (so operations have several
// predecessors and name several actors), and checks that Import's checks
// never refuse a change Automerge made: every exchange imports, every
// change ChangesSince exports is in canonical encoding, and every replica
// saves and reloads. Besides the fixed runs it runs one seeded from the clock;
// a failure prints its seed, to rerun with -crdt.checkseed.
func TestNoFalseRefusals(t *testing.T) {
	runs := []uint64{1, 2, 3, 5, 8, 13, 21, 34, uint64(time.Now().UnixNano())}
	steps := 250
	if testing.Short() {
		runs, steps = runs[:2], 80
	}
	if *checkSeed != 0 {
		runs = []uint64{*checkSeed}
	}
	for _, seed := range runs {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			n, err := runNoFalseRefusals(seed, steps)
			if err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
			t.Logf("seed %d: %d changes checked", seed, n)
		})
	}
}

type checkSim struct {
	rng  *rand.Rand
	docs []*crdt.Doc
	log  []string
}

func (s *checkSim) logf(format string, args ...any) {
	s.log = append(s.log, fmt.Sprintf(format, args...))
}

func runNoFalseRefusals(seed uint64, steps int) (checked int, err error) {
	s := &checkSim{rng: rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\nlast operations:\n%v", err, s.log[max(0, len(s.log)-25):])
		}
	}()
	origin, err := crdt.New(actorA)
	if err != nil {
		return 0, err
	}
	if err := origin.Put(map[string]any{
		"c": crdt.Counter(0), "t": crdt.Text("héllo"), "l": []any{"x", int64(1)},
		"m": map[string]any{"inner": map[string]any{"deep": []any{true}}},
	}); err != nil {
		return 0, err
	}
	if _, err := origin.Commit("init", epoch); err != nil {
		return 0, err
	}
	s.docs = []*crdt.Doc{origin}
	for _, actor := range []string{actorB, actorC} {
		d, err := crdt.New(actor)
		if err != nil {
			return 0, err
		}
		data, err := origin.ChangesSince(nil)
		if err != nil {
			return 0, err
		}
		if _, err := d.Import(data); err != nil {
			return 0, fmt.Errorf("initial import: %w", err)
		}
		s.docs = append(s.docs, d)
	}
	for step := range steps {
		if s.rng.IntN(5) == 0 {
			if err := s.exchange(); err != nil {
				return 0, fmt.Errorf("step %d: %w", step, err)
			}
			continue
		}
		i := s.rng.IntN(len(s.docs))
		if err := s.edit(i); err != nil && !errors.Is(err, crdt.ErrPath) && !errors.Is(err, crdt.ErrType) {
			return 0, fmt.Errorf("step %d: edit on replica %d: %w", step, i, err)
		}
		if s.rng.IntN(3) > 0 {
			at := epoch.Add(time.Duration(step) * time.Second)
			if s.rng.IntN(4) == 0 {
				at = time.Time{}
			}
			if _, err := s.docs[i].Commit(s.message(step), at); err != nil {
				return 0, err
			}
		}
	}
	for range 2 {
		if err := s.exchangeAll(); err != nil {
			return 0, err
		}
	}
	for i, d := range s.docs {
		all, err := d.ChangesSince(nil)
		if err != nil {
			return 0, err
		}
		if err := crdt.CheckEncoding(all); err != nil {
			return 0, fmt.Errorf("replica %d exports a change its own check refuses: %w", i, err)
		}
		infos, err := crdt.ParseChanges(all)
		if err != nil {
			return 0, err
		}
		checked += len(infos)
		fresh, err := crdt.New("ee05")
		if err != nil {
			return 0, err
		}
		if _, err := fresh.Import(all); err != nil {
			return 0, fmt.Errorf("replica %d's history into a new document: %w", i, err)
		}
		l, err := crdt.Load(d.Save(), "")
		if err != nil {
			return 0, fmt.Errorf("replica %d does not reload: %w", i, err)
		}
		if !l.Heads().Equal(d.Heads()) {
			return 0, fmt.Errorf("replica %d reloads with other heads", i)
		}
	}
	return checked, nil
}

func (s *checkSim) message(step int) string {
	if s.rng.IntN(3) == 0 {
		return ""
	}
	return fmt.Sprint("step ", step, " ✓")
}

// exchange sends one replica's new changes to another, as a sync would.
func (s *checkSim) exchange() error {
	i, j := s.rng.IntN(len(s.docs)), s.rng.IntN(len(s.docs))
	if i == j {
		return nil
	}
	return s.send(i, j)
}

func (s *checkSim) exchangeAll() error {
	for i := range s.docs {
		for j := range s.docs {
			if i != j {
				if err := s.send(i, j); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (s *checkSim) send(i, j int) error {
	from, to := s.docs[i], s.docs[j]
	data, err := from.ChangesSince(to.Heads())
	if errors.Is(err, crdt.ErrUnknownHeads) {
		data, err = from.ChangesSince(nil)
	}
	if err != nil {
		return err
	}
	s.logf("send %d -> %d (%d bytes)", i, j, len(data))
	if _, err := to.Import(data); err != nil {
		return fmt.Errorf("import %d -> %d refused a change Automerge made: %w", i, j, err)
	}
	return nil
}

var checkKeys = []string{"a", "b", "ключ", "🔑", "c2"}

// value returns a value of a random kind.
func (s *checkSim) value(depth int) any {
	switch s.rng.IntN(14) {
	case 0:
		return s.word()
	case 1:
		return []int64{0, -1, math.MaxInt64, math.MinInt64, s.rng.Int64()}[s.rng.IntN(5)]
	case 2:
		return []uint64{0, 1, math.MaxUint64, 1 << 63, s.rng.Uint64()}[s.rng.IntN(5)]
	case 3:
		return []float64{0, -1.5, math.Inf(1), math.SmallestNonzeroFloat64, s.rng.Float64()}[s.rng.IntN(5)]
	case 4:
		return s.rng.IntN(2) == 0
	case 5:
		b := make([]byte, s.rng.IntN(4))
		for i := range b {
			b[i] = byte(s.rng.IntN(256))
		}
		return b
	case 6:
		return nil
	case 7:
		return time.UnixMilli(s.rng.Int64N(4_000_000_000_000) - 1_000_000_000_000).UTC()
	case 8:
		return crdt.Counter(s.rng.Int64N(100) - 50)
	case 9:
		return crdt.Text(s.word())
	case 10, 11:
		if depth < 2 {
			m := map[string]any{}
			for range s.rng.IntN(3) {
				m[checkKeys[s.rng.IntN(len(checkKeys))]] = s.value(depth + 1)
			}
			return m
		}
	case 12, 13:
		if depth < 2 {
			l := []any{}
			for range s.rng.IntN(3) {
				l = append(l, s.value(depth+1))
			}
			return l
		}
	}
	return s.word()
}

func (s *checkSim) word() string {
	words := []string{"a", "é", "😀", "xyz", " ", "ß→", "\n", "中文", "👩‍👩‍👧"}
	out := ""
	for range 1 + s.rng.IntN(3) {
		out += words[s.rng.IntN(len(words))]
	}
	return out
}

// edit makes one random edit on replica i. Edits that do not fit the
// document as it is (a path through a scalar, say) fail with ErrPath or
// ErrType and are skipped.
func (s *checkSim) edit(i int) error {
	d := s.docs[i]
	k := checkKeys[s.rng.IntN(len(checkKeys))]
	switch s.rng.IntN(12) {
	case 0, 1:
		v := s.value(0)
		s.logf("%d: set %s = %#v", i, k, v)
		return d.Set(crdt.Path{k}, v)
	case 2:
		v := s.value(1)
		s.logf("%d: set m.inner.%s = %#v", i, k, v)
		return d.Set(crdt.Path{"m", "inner", k}, v)
	case 3:
		s.logf("%d: delete %s", i, k)
		return d.Delete(crdt.Path{k})
	case 4:
		n := s.listLen(d)
		idx, v := s.rng.IntN(n+1), s.value(1)
		s.logf("%d: insert l[%d] = %#v", i, idx, v)
		return d.InsertAt(crdt.Path{"l"}, idx, v)
	case 5:
		if n := s.listLen(d); n > 0 {
			idx, v := s.rng.IntN(n), s.value(1)
			s.logf("%d: set l[%d] = %#v", i, idx, v)
			return d.Set(crdt.Path{"l", idx}, v)
		}
	case 6:
		if n := s.listLen(d); n > 0 {
			idx := s.rng.IntN(n)
			s.logf("%d: delete l[%d]", i, idx)
			return d.Delete(crdt.Path{"l", idx})
		}
	case 7, 8:
		t, _ := d.Get(crdt.Path{"t"})
		n := len([]rune(fmt.Sprint(t)))
		pos := s.rng.IntN(n + 1)
		del := s.rng.IntN(n - pos + 1)
		ins := s.word()
		s.logf("%d: splice t at %d, delete %d, insert %q", i, pos, del, ins)
		return d.SpliceText(crdt.Path{"t"}, pos, del, ins)
	case 9:
		by := s.rng.Int64N(21) - 10
		s.logf("%d: increment c by %d", i, by)
		return d.Increment(crdt.Path{"c"}, by)
	case 10:
		del := s.rng.IntN(2) == 0
		s.logf("%d: deleted = %v", i, del)
		return d.SetDeleted(del)
	case 11:
		s.logf("%d: delete m.inner.%s", i, k)
		return d.Delete(crdt.Path{"m", "inner", k})
	}
	return nil
}

func (s *checkSim) listLen(d *crdt.Doc) int {
	l, err := d.Get(crdt.Path{"l"})
	if err != nil {
		return 0
	}
	if x, ok := l.([]any); ok {
		return len(x)
	}
	return 0
}

// Automerge encodes a change of more than 10,000 operations row by row
// rather than column by column; the bytes must be the same.
func TestNoFalseRefusalOfLargeChange(t *testing.T) {
	d := newDoc(t, actorA)
	words := make([]any, 0, 4000)
	for i := range 4000 {
		words = append(words, []any{int64(i % 7), "w", nil}[i%3])
	}
	set(t, d, crdt.Path{"l"}, words)
	if err := d.SpliceText(crdt.Path{"t"}, 0, 0, repeatRunes("é🙂a", 2500)); err != nil {
		t.Fatal(err)
	}
	commit(t, d)
	for i := range 3000 {
		set(t, d, crdt.Path{"m", fmt.Sprint("k", i)}, i)
	}
	commit(t, d)
	all, err := d.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := crdt.CheckEncoding(all); err != nil {
		t.Fatal(err)
	}
	e := newDoc(t, actorB)
	if n, err := e.Import(all); n != 2 || err != nil {
		t.Fatalf("Import = %d, %v", n, err)
	}
}

func repeatRunes(s string, n int) string {
	out := make([]rune, 0, n*len(s))
	for range n {
		out = append(out, []rune(s)...)
	}
	return string(out)
}
