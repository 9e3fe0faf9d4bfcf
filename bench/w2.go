package bench

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/replica"
)

// w2Warmup edits go through before timing starts, so the live sessions'
// catch-up syncs are over.
const w2Warmup = 3

// w2Wait bounds the wait for one update to reach B.
const w2Wait = 30 * time.Second

// W2 is live latency: replicas A and B (durable, on disk) run live
// profiles on one collection holding one record; A makes Updates
// sequential single-field updates, each timed from the start of A's
// Update until B's Watch feed reports the remote change (same heads as
// A's). A's commit and the relay's append are durable; B's apply too.
func W2(ctx context.Context, cfg Config) (res *Result, err error) {
	cfg, res, cleanup, err := prepare(ctx, cfg, "W2")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	start := time.Now()
	dir := filepath.Join(cfg.Dir, "W2")
	env, err := startRelay(ctx, cfg.Relay, dir)
	if err != nil {
		return nil, err
	}
	defer closeAll(&err, env.close)
	a, err := openReplica(dir, "a", nil)
	if err != nil {
		return nil, err
	}
	defer closeAll(&err, a.Close)
	b, err := openReplica(dir, "b", nil)
	if err != nil {
		return nil, err
	}
	defer closeAll(&err, b.Close)

	coll := collName("w2")
	const id = "live-record"
	ca, _ := a.Collection(coll)
	cb, _ := b.Collection(coll)
	if err := ca.Create(id, products(cfg.Seed, 2, 1)[0]); err != nil {
		return nil, err
	}
	feed := cb.Watch(4096)
	defer feed.Close()

	before, err := env.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	if err := env.addProfile(a, coll, policy.Live); err != nil {
		return nil, err
	}
	if err := env.addProfile(b, coll, policy.Live); err != nil {
		return nil, err
	}
	if err := waitSubscribers(ctx, env, before.m[mSubscribers]+2); err != nil {
		return nil, err
	}
	h, err := ca.Heads(id)
	if err != nil {
		return nil, err
	}
	if err := waitHeads(ctx, feed, id, h); err != nil {
		return nil, fmt.Errorf("record did not reach B: %w", err)
	}

	pr := newProgress(cfg.Progress)
	lat := make([]time.Duration, 0, cfg.Updates)
	commit := make([]time.Duration, 0, cfg.Updates)
	for i := -w2Warmup; i < cfg.Updates; i++ {
		t0 := time.Now()
		err := ca.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, i) })
		t1 := time.Now()
		if err != nil {
			return nil, fmt.Errorf("update %d: %w", i, err)
		}
		h, err := ca.Heads(id)
		if err != nil {
			return nil, err
		}
		if err := waitHeads(ctx, feed, id, h); err != nil {
			return nil, fmt.Errorf("update %d did not reach B: %w", i, err)
		}
		if i >= 0 {
			lat = append(lat, time.Since(t0))
			commit = append(commit, t1.Sub(t0))
		}
		if i >= 0 {
			pr.report(i == cfg.Updates-1, "W2: %d/%d updates", i+1, cfg.Updates)
		}
	}
	if cfg.Verify {
		var got Product
		if err := cb.Get(id, &got); err != nil {
			return nil, err
		}
		if got.Qty != cfg.Updates-1 {
			return nil, checkf("B's qty is %d, want %d", got.Qty, cfg.Updates-1)
		}
	}

	s := sortedDurations(lat)
	res.add(Metric{Name: "updates", Value: float64(len(lat)), Unit: "count"})
	res.latency("latency_p50", percentile(s, 50))
	res.latency("latency_p99", percentile(s, 99))
	res.latency("latency_max", s[len(s)-1])
	res.latency("a_commit_p50", percentile(sortedDurations(commit), 50))
	if tenth := len(lat) / 10; tenth > 0 {
		// The record's history grows by one change per update: a cost
		// that grows with it shows as a later tenth slower than the first.
		res.latency("latency_p50_first_tenth", percentile(sortedDurations(lat[:tenth]), 50))
		res.latency("latency_p50_last_tenth", percentile(sortedDurations(lat[len(lat)-tenth:]), 50))
	}
	res.Notes = append(res.Notes,
		"latency: from the start of A's Update (durable commit) until B's feed reports the change applied (durable); live profiles on both, via the relay",
		"a_commit: A's local Update alone; ratio: W0's time for one change / the latency")
	res.Elapsed = time.Since(start)
	return res, nil
}

// waitHeads reads feed until a remote event of record id with heads h.
func waitHeads(ctx context.Context, feed *replica.Feed, id string, h crdt.Heads) error {
	t := time.NewTimer(w2Wait)
	defer t.Stop()
	for {
		select {
		case ev, ok := <-feed.C:
			if !ok {
				return fmt.Errorf("feed closed: %w", feed.Err())
			}
			if ev.ID == id && ev.Origin == replica.Remote && ev.Heads.Equal(h) {
				return nil
			}
		case <-t.C:
			return fmt.Errorf("not seen within %s", w2Wait)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitSubscribers polls the relay's /metrics until it has at least n live
// subscriptions.
func waitSubscribers(ctx context.Context, env *relayEnv, n float64) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		s, err := env.snapshot(ctx)
		if err == nil && s.m[mSubscribers] >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.Join(fmt.Errorf("bench: the relay has %v live subscribers after a minute, want %v", s.m[mSubscribers], n), err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
