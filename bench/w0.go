package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/automerge/automerge-go"

	"github.com/ferrysync/ferry/crdt"
)

// floorStream is the product stream of W0 and W1: the same seed gives
// both the same records.
const floorStream = 1

const w0Title = "floor: raw automerge-go import"

// floorRuns is how many timed runs a floor takes, after one untimed
// warm-up run; its figure is their median.
const floorRuns = 5

// W0 is the floor the creation figures are a ratio to: raw automerge-go
// LoadIncremental of the creation changes of W1's Records records (see
// creationChanges), each into a fresh document, freed after, in this
// process, with no Ferry code, storage or network. Making the changes is
// not timed. It runs once to warm up, then floorRuns times; the floor is
// the median run.
func W0(ctx context.Context, cfg Config) (*Result, error) {
	cfg = cfg.withDefaults()
	n := cfg.Records
	chs, total, err := creationChanges(actorID(cfg.Seed, floorStream), products(cfg.Seed, floorStream, n), time.UnixMilli(1_700_000_000_000))
	if err != nil {
		return nil, err
	}
	runs, err := timeRuns(ctx, func() (time.Duration, error) {
		t0 := time.Now()
		err := loadEach(chs)
		return time.Since(t0), err
	})
	if err != nil {
		return nil, err
	}
	med := median(runs)
	f := Floor{Changes: n, Seconds: med.Seconds(), Bytes: total, Rate: float64(n) / med.Seconds()}
	for _, d := range runs {
		f.Runs = append(f.Runs, d.Seconds())
	}
	r := &Result{Workload: "W0", Title: w0Title, Seed: cfg.Seed, Floor: f, Elapsed: med}
	r.time("import", med, n, "changes/s")
	r.add(Metric{Name: "change_bytes", Value: float64(total), Unit: "B", Ratio: 1})
	r.Notes = append(r.Notes, fmt.Sprintf("%d creation changes (one per record), %.0f B each on average, LoadIncremental into %d fresh documents, each freed after; median of %d runs after a warm-up (%s)",
		n, float64(total)/float64(n), n, floorRuns, fmtRuns(runs)))
	return r, nil
}

// loadEach loads each change into a fresh raw Automerge document, and
// frees it.
func loadEach(chs []created) error {
	for i, c := range chs {
		d := automerge.New()
		err := d.LoadIncremental(c.data)
		if err == nil && len(d.Heads()) != 1 {
			err = checkf("W0 change %d did not apply", i)
		}
		crdt.FreeAutomerge(d)
		if err != nil {
			return fmt.Errorf("bench: W0 change %d: %w", i, err)
		}
	}
	return nil
}

// timeRuns runs run once untimed, to warm up, then floorRuns times, and
// returns the durations it reports.
func timeRuns(ctx context.Context, run func() (time.Duration, error)) ([]time.Duration, error) {
	var out []time.Duration
	for i := range floorRuns + 1 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		d, err := run()
		if err != nil {
			return nil, err
		}
		if i > 0 {
			out = append(out, d)
		}
	}
	return out, nil
}

// median returns the median of ds (the lower middle of an even count).
func median(ds []time.Duration) time.Duration {
	s := sortedDurations(ds)
	return s[(len(s)-1)/2]
}

// fmtRuns lists runs for a note, shortest first.
func fmtRuns(ds []time.Duration) string {
	s := sortedDurations(ds)
	out := make([]string, len(s))
	for i, d := range s {
		out[i] = fmtDuration(d.Seconds())
	}
	return strings.Join(out, ", ")
}
