package crdt_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// TestEstimate checks that what Estimate says of a record's bytes, before
// anything loads them, is close to what Cost says once they are loaded:
// within 1% below Cost (the Go index's entries per actor are not
// counted) and a third above it (the keys of a whole document are
// counted high), for a saved document, for its changes, and
// for both.
func TestEstimate(t *testing.T) {
	for _, shape := range costShapes {
		t.Run(shape.name, func(t *testing.T) {
			saved := shape.build(t)
			d, err := crdt.Load(saved, "")
			if err != nil {
				t.Fatal(err)
			}
			defer d.Free()
			want, err := d.Cost()
			if err != nil {
				t.Fatal(err)
			}
			changes, err := d.ChangesSince(nil)
			if err != nil {
				t.Fatal(err)
			}
			for name, b := range map[string][]byte{"saved": saved, "changes": changes} {
				got, err := crdt.Estimate(b, nil)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if got.Changes != want.Changes || got.Ops != want.Ops {
					t.Errorf("%s: estimate counts %d changes, %d ops; loaded, %d and %d", name, got.Changes, got.Ops, want.Changes, want.Ops)
				}
				if got.Bytes < want.Bytes*99/100 || got.Bytes > want.Bytes*4/3 {
					t.Errorf("%s: estimate %d bytes, loaded document's cost %d", name, got.Bytes, want.Bytes)
				}
			}
		})
	}
}

// TestEstimateRefuses checks that Estimate refuses what does not frame,
// and inflates within its budget.
func TestEstimateRefuses(t *testing.T) {
	saved := objectHeavy(t)
	if _, err := crdt.Estimate(saved[:len(saved)-1], nil); !errors.Is(err, crdt.ErrCorrupt) {
		t.Errorf("truncated document: %v, want ErrCorrupt", err)
	}
	if _, err := crdt.Estimate(saved, crdt.NewInflateBudget(100)); err != nil && !errors.Is(err, crdt.ErrInflateLimit) {
		t.Errorf("a 100-byte inflation budget: %v, want nil or ErrInflateLimit", err)
	}
}

// TestEstimateCountsAsDecoded checks that Estimate's count of a change,
// read from three of its columns, is what decoding its operations counts,
// for changes of every kind and for seeded mutations of them that still
// decode.
func TestEstimateCountsAsDecoded(t *testing.T) {
	_, payloads := richFixture(t)
	rng := rand.New(rand.NewPCG(2026, 7))
	for i := range 3000 {
		p := bytes.Clone(payloads[i%len(payloads)])
		if i >= len(payloads) {
			for range 1 + rng.IntN(3) {
				p = mutate(rng, p)
			}
		}
		if err := crdt.CountMismatch(p); err != nil {
			t.Fatalf("payload %d (%x): %v", i, p, err)
		}
	}
}
