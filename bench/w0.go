package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/automerge/automerge-go"
)

// floorStream is the product stream of W0 and W1: the same seed gives
// both the same records.
const floorStream = 1

const w0Title = "floor: raw automerge-go import"

// W0 is the floor every other figure is a ratio to: raw automerge-go
// LoadIncremental of the creation changes of W1's Records records (see
// creationChanges), each into a fresh document, in this process, with no
// Ferry code, storage or network. Making the changes is not timed.
func W0(ctx context.Context, cfg Config) (*Result, error) {
	cfg = cfg.withDefaults()
	n := cfg.Records
	chs, total, err := creationChanges(actorID(cfg.Seed, floorStream), products(cfg.Seed, floorStream, n), time.UnixMilli(1_700_000_000_000))
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	start := time.Now()
	if err := loadEach(chs); err != nil {
		return nil, err
	}
	el := time.Since(start)
	f := Floor{Changes: n, Seconds: el.Seconds(), Bytes: total, Rate: float64(n) / el.Seconds()}
	r := &Result{Workload: "W0", Title: w0Title, Seed: cfg.Seed, Floor: f, Elapsed: el}
	r.time("import", el, n, "changes/s")
	r.add(Metric{Name: "change_bytes", Value: float64(total), Unit: "B", Ratio: 1})
	r.Notes = append(r.Notes, fmt.Sprintf("%d creation changes (one per record), %.0f B each on average, LoadIncremental into %d fresh documents", n, float64(total)/float64(n), n))
	return r, nil
}

// loadEach loads each change into a fresh raw Automerge document.
func loadEach(chs []created) error {
	for i, c := range chs {
		d := automerge.New()
		if err := d.LoadIncremental(c.data); err != nil {
			return fmt.Errorf("bench: W0 change %d: %w", i, err)
		}
		if len(d.Heads()) != 1 {
			return checkf("W0 change %d did not apply", i)
		}
	}
	return nil
}
