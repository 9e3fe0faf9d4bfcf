package relay_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// TestSavedGrowthMargin: what a change adds to a saved document stays
// within relay.SavedGrowth times the change's bytes as pushed, for random edits
// (nested map keys, text splices, list inserts, counters, deletes, many
// objects in one change) from several actors, compressed or not. The push
// path saves a document to check max_record only when this margin could
// reach the limit.
func TestSavedGrowthMargin(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 15))
	relayDoc, _ := crdt.New("")
	actors := make([]*crdt.Doc, 3)
	for i := range actors {
		actors[i], _ = crdt.New(fmt.Sprintf("5a%02x", i))
	}
	worst := 0.0
	for round := range 200 {
		d := actors[rng.IntN(len(actors))]
		// Bring the actor up to date now and then, so changes are both
		// concurrent and sequential.
		if rng.IntN(3) == 0 {
			all, err := relayDoc.ChangesSince(nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := d.Import(all); err != nil {
				t.Fatal(err)
			}
		}
		ch := randomChange(t, rng, d, 1+rng.IntN(40))
		if ch == nil {
			continue
		}
		before := len(relayDoc.Save())
		if _, err := relayDoc.Import(ch); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		grew := len(relayDoc.Save()) - before
		if r := float64(grew) / float64(len(ch)); r > worst {
			worst = r
		}
		if grew > relay.SavedGrowth*len(ch) {
			t.Fatalf("round %d: a change of %d bytes grew the saved document by %d, past %d times", round, len(ch), grew, relay.SavedGrowth)
		}
	}
	t.Logf("largest growth: %.2f times the change's bytes", worst)
}

// randomEdit makes one seeded edit of any kind (map fields, scalars,
// text, lists, counters, deletes) to d.
func randomEdit(rng *rand.Rand, d *crdt.Doc) error {
	word := func() string { return noise(rng, 1+rng.IntN(12)) }
	key := fmt.Sprint("k", rng.IntN(8))
	switch rng.IntN(6) {
	case 0:
		return d.Set(crdt.Path{"m", key, fmt.Sprint("n", rng.IntN(4))}, word())
	case 1:
		return d.Set(crdt.Path{key}, rng.Int64N(1<<40))
	case 2:
		p := crdt.Path{"t" + key}
		s, _ := d.Get(p)
		n := 0
		if str, ok := s.(string); ok {
			n = len([]rune(str))
		}
		pos := rng.IntN(n + 1)
		return d.SpliceText(p, pos, min(rng.IntN(3), n-pos), word())
	case 3:
		p := crdt.Path{"l" + key}
		v, _ := d.Get(p)
		n := 0
		if l, ok := v.([]any); ok {
			n = len(l)
		}
		return d.InsertAt(p, rng.IntN(n+1), word())
	case 4:
		return d.Set(crdt.Path{"c" + key}, crdt.Counter(rng.Int64N(100)))
	default:
		return d.Delete(crdt.Path{key})
	}
}

// randomChange makes edits seeded edits to d and commits them, and returns
// the change, compressed half the time when large enough (nil if the
// edits changed nothing).
func randomChange(t testing.TB, rng *rand.Rand, d *crdt.Doc, edits int) []byte {
	t.Helper()
	at := d.Heads()
	for range edits {
		if err := randomEdit(rng, d); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := d.Commit("", time.Time{}); err != nil || !ok {
		return nil
	}
	ch, err := d.ChangesSince(at)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch) > 256 && rng.IntN(2) == 0 {
		ch = compressChange(t, ch)
	}
	return ch
}
