package bench

import (
	"context"
	"fmt"
	"time"
)

// W5 is growth: W1 (insert, push, fresh pull) and W4 (ingest) at each of
// the Growth sizes up to MaxGrowth, reporting time and relay memory per
// record, so that costs that grow faster than the data show up as rising
// per-record figures.
func W5(ctx context.Context, cfg Config) (res *Result, err error) {
	cfg, res, cleanup, err := prepare(ctx, cfg, "W5")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	start := time.Now()
	var sizes []int
	for _, n := range cfg.Growth {
		if cfg.MaxGrowth > 0 && n > cfg.MaxGrowth {
			res.Notes = append(res.Notes, fmt.Sprintf("size %d skipped (over the cap of %d)", n, cfg.MaxGrowth))
			continue
		}
		sizes = append(sizes, n)
	}
	if len(sizes) == 0 {
		return nil, fmt.Errorf("bench: W5 has no sizes at or under %d", cfg.MaxGrowth)
	}
	perRecord := func(name string, d time.Duration, n int) {
		res.add(Metric{Name: name, Value: d.Seconds() / float64(n), Unit: "s/record", Ratio: res.Floor.TimeRatio(n, d.Seconds())})
	}
	for _, n := range sizes {
		cfg.Progress(fmt.Sprintf("W5: W1 at %d records", n))
		b, err := bulk(ctx, cfg, n, "W5-W1")
		if err != nil {
			return nil, fmt.Errorf("W1 at %d: %w", n, err)
		}
		p := fmt.Sprintf("w1_n%d_", n)
		perRecord(p+"insert", b.insert, n)
		perRecord(p+"push", b.push, n)
		perRecord(p+"fresh_pull", b.pull, n)
		res.memory(p, b.mem, n)

		cfg.Progress(fmt.Sprintf("W5: W4 at %d records", n))
		in, err := ingest(ctx, cfg, n, "W5-W4")
		if err != nil {
			return nil, fmt.Errorf("W4 at %d: %w", n, err)
		}
		p = fmt.Sprintf("w4_n%d_", n)
		perRecord(p+"ingest", in.elapsed, n)
		res.memory(p, in.mem, n)
	}
	res.Notes = append(res.Notes,
		"per record: a phase's time / its records (ratio as W1's and W4's); relay_rss_per_record: the relay's RSS growth over the run / records",
		"W4 here pushes with Config.Clients, Batch and Subscribers as W4 does")
	res.Elapsed = time.Since(start)
	return res, nil
}
