package bench

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
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

// W2 is live latency: replicas A and B (on disk) run live profiles on
// one collection holding one record; A makes Updates sequential
// single-field updates, each timed from the start of A's Update until B's
// Watch feed reports the remote change (same heads as A's). The path
// holds the relay's append's fsync; A's commit's runs beside it, as A
// pushes while it runs (replica/liveearly.go). B applies the
// change and its cursor without one, as every device applies a change
// from the relay: lost in a power cut, it is fetched again. Its ratios are
// to raw automerge-go applying the same edits (Result.EditFloor).
func W2(ctx context.Context, cfg Config) (*Result, error) {
	return live(ctx, cfg, "W2", func(c Config) int { return c.Updates })
}

// W2L is W2 with a long history: History updates (default 10,000) to the
// one record, so that a cost growing with the record's history shows as
// the last tenth of the updates slower than the first. Its figure is the
// ratio of their p50s (latency_p50_growth; 1 means flat).
func W2L(ctx context.Context, cfg Config) (*Result, error) {
	return live(ctx, cfg, "W2L", func(c Config) int { return c.History })
}

// live runs W2's procedure as workload name, with updates(cfg) updates.
func live(ctx context.Context, cfg Config, name string, updates func(Config) int) (res *Result, err error) {
	cfg, res, cleanup, err := prepare(ctx, cfg, name)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	n := updates(cfg)
	start := time.Now()
	ef, err := w2Floor(ctx, cfg.Seed, n)
	if err != nil {
		return nil, err
	}
	res.EditFloor = &ef
	dir := filepath.Join(cfg.Dir, name)
	env, err := startRelay(ctx, cfg.Relay, dir)
	if err != nil {
		return nil, err
	}
	defer closeAll(&err, env.close)
	a, err := env.openReplica(dir, "a", replica.Listener{})
	if err != nil {
		return nil, err
	}
	defer closeAll(&err, a.Close)
	b, err := env.openReplica(dir, "b", replica.Listener{})
	if err != nil {
		return nil, err
	}
	defer closeAll(&err, b.Close)

	w := &w2Run{ctx: ctx, env: env, name: name, coll: collName(strings.ToLower(name)), n: n, tenth: n / 10}
	w.ca, w.cb = a.Collection(w.coll), b.Collection(w.coll)
	if err := w.ca.Create(w2Record, products(cfg.Seed, 2, 1)[0]); err != nil {
		return nil, err
	}
	w.feed = w.cb.Watch(4096)
	defer w.feed.Close()
	before, err := env.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	if err := w.goLive(a, b, before); err != nil {
		return nil, err
	}
	if err := w.run(newProgress(cfg.Progress)); err != nil {
		return nil, err
	}
	end, err := env.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	if cfg.Verify {
		var got Product
		if err := w.cb.Get(w2Record, &got); err != nil {
			return nil, err
		}
		if got.Qty != n-1 {
			return nil, checkf("B's qty is %d, want %d", got.Qty, n-1)
		}
	}
	w.report(res)
	res.add(Metric{Name: "relay_compactions", Value: end.since(before, mCompactions), Unit: "count", Note: "relay /metrics " + mCompactions})
	res.Elapsed = time.Since(start)
	return res, nil
}

// w2Record is the one record W2 updates.
const w2Record = "live-record"

// W2's timed spans: an update from the start of A's Update until B has
// it, and A's Update alone (which starts with it).
const (
	spanW2Update = "W2 update"
	spanW2Commit = "W2 commit"
)

// w2Run is one run of W2: A's and B's collections, B's feed, and what the
// updates measured.
type w2Run struct {
	ctx        context.Context
	env        *relayEnv
	name, coll string
	n, tenth   int
	ca, cb     *replica.Collection
	feed       *replica.Feed

	lat, commit []time.Duration   // per update, in order
	events      chan stampedEvent // B's feed, timed as it came (run)
	// The relay's meters at the edges of the first and the last tenth, to
	// tell the relay's share of a growth from the replicas': before update
	// 0, tenth, n-tenth, and after the last.
	edges [4]snapshot
}

// goLive starts both replicas' live profiles, and waits until the relay
// has their subscriptions and B has the record.
func (w *w2Run) goLive(a, b *replica.Replica, before snapshot) error {
	if err := w.env.addProfile(a, w.coll, policy.Live, false); err != nil {
		return err
	}
	if err := w.env.addProfile(b, w.coll, policy.Live, false); err != nil {
		return err
	}
	if err := waitSubscribers(w.ctx, w.env, before.m[mSubscribers]+2); err != nil {
		return err
	}
	h, err := w.ca.Heads(w2Record)
	if err != nil {
		return err
	}
	if err := waitHeads(w.ctx, w.feed, w2Record, h); err != nil {
		return fmt.Errorf("record did not reach B: %w", err)
	}
	return nil
}

// run makes the updates, after w2Warmup untimed ones, each timed from the
// start of A's Update until B's feed has it.
func (w *w2Run) run(pr *progress) error {
	edgeAt := func(i int) (int, bool) {
		for k, at := range [4]int{0, w.tenth, w.n - w.tenth, w.n} {
			if i == at && w.tenth > 0 {
				return k, true
			}
		}
		return 0, false
	}
	// B's feed is read, and each event timed as it comes, on a goroutine
	// of its own: B may have an update before A's Update returns (A pushes
	// while its fsync runs), and the update reached B then.
	w.events = make(chan stampedEvent, 4096)
	go stampEvents(w.feed, w.events)
	w.lat = make([]time.Duration, 0, w.n)
	w.commit = make([]time.Duration, 0, w.n)
	for i := -w2Warmup; i <= w.n; i++ {
		if k, ok := edgeAt(i); ok {
			var err error
			if w.edges[k], err = w.env.snapshot(w.ctx); err != nil {
				return err
			}
		}
		if i == w.n {
			return nil
		}
		t0 := edge(spanW2Update, true)
		err := w.ca.Update(w2Record, func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, i) })
		t1 := edge(spanW2Commit, false)
		if err != nil {
			return fmt.Errorf("update %d: %w", i, err)
		}
		h, err := w.ca.Heads(w2Record)
		if err != nil {
			return err
		}
		t2, err := w.arrived(h)
		if err != nil {
			return fmt.Errorf("update %d did not reach B: %w", i, err)
		}
		edge(spanW2Update, false)
		if i >= 0 {
			w.lat = append(w.lat, t2.Sub(t0))
			w.commit = append(w.commit, t1.Sub(t0))
			pr.report(i == w.n-1, "%s: %d/%d updates", w.name, i+1, w.n)
		}
	}
	return nil
}

// report adds the run's latencies to res.
func (w *w2Run) report(res *Result) {
	lat, commit, n, tenth := w.lat, w.commit, w.n, w.tenth
	ef := res.EditFloor
	s := sortedDurations(lat)
	res.add(Metric{Name: "updates", Value: float64(len(lat)), Unit: "count"})
	res.latencyVs("latency_p50", percentile(s, 50), ef)
	res.latencyVs("latency_p99", percentile(s, 99), ef)
	res.latencyVs("latency_max", s[len(s)-1], ef)
	res.latency("a_commit_p50", percentile(sortedDurations(commit), 50))
	res.add(Metric{Name: "floor_apply", Value: ef.Time(1), Unit: "s",
		Note: "raw automerge-go applying one of these edits (LoadIncremental into a document holding the record), mean of the median run"})
	if tenth > 0 {
		// The record's history grows by one change per update: a cost
		// that grows with it shows as a later tenth slower than the first.
		first, last := sortedDurations(lat[:tenth]), sortedDurations(lat[n-tenth:])
		res.latencyVs("latency_p50_first_tenth", percentile(first, 50), ef)
		res.latencyVs("latency_p50_last_tenth", percentile(last, 50), ef)
		res.latency("latency_p99_first_tenth", percentile(first, 99))
		res.latency("latency_p99_last_tenth", percentile(last, 99))
		res.add(Metric{Name: "latency_p50_growth", Value: growth(percentile(last, 50), percentile(first, 50)), Unit: "x",
			Note: "p50 of the last tenth of the updates / p50 of the first tenth (1: flat)"})
		res.add(Metric{Name: "latency_p99_growth", Value: growth(percentile(last, 99), percentile(first, 99)), Unit: "x"})
		res.latency("a_commit_p50_first_tenth", percentile(sortedDurations(commit[:tenth]), 50))
		res.latency("a_commit_p50_last_tenth", percentile(sortedDurations(commit[n-tenth:]), 50))
		relayPush := func(name string, from, to snapshot) {
			if pushes := to.since(from, mPushes); pushes > 0 {
				res.latency(name, time.Duration(to.since(from, mPushSeconds)/pushes*float64(time.Second)))
			}
		}
		relayPush("relay_push_mean_first_tenth", w.edges[0], w.edges[1])
		relayPush("relay_push_mean_last_tenth", w.edges[2], w.edges[3])
	}
	res.Notes = append(res.Notes,
		"latency: from the start of A's Update until B's feed reports the change applied, through the relay; the relay's append's fsync on the path, A's commit's beside it (A pushes while it runs), none for B's apply",
		"latency ratio: raw automerge-go's time to apply one of the same edits (floor_apply) / the latency",
		"a_commit: A's local Update alone (durable: one fsync)",
		"first and last tenth: the first and the last tenth of the updates, in order; the record holds one more change after each",
		"relay_push_mean: the relay's mean time answering a push over that tenth (relay /metrics ferry_relay_request_seconds)")
	if n := w.env.devicesNote(); n != "" {
		res.Notes = append(res.Notes, n)
	}
}

// growth is last ÷ first, 0 if first is 0.
func growth(last, first time.Duration) float64 {
	if first <= 0 {
		return 0
	}
	return float64(last) / float64(first)
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

// stampedEvent is an event of B's feed and when B's feed delivered it.
type stampedEvent struct {
	ev replica.Event
	at time.Time
}

// stampEvents sends feed's events to out with the time each came, until
// the feed closes.
func stampEvents(feed *replica.Feed, out chan<- stampedEvent) {
	defer close(out)
	for ev := range feed.C {
		out <- stampedEvent{ev, time.Now()}
	}
}

// arrived returns when B's feed reported A's change of the record to
// heads h.
func (w *w2Run) arrived(h crdt.Heads) (time.Time, error) {
	t := time.NewTimer(w2Wait)
	defer t.Stop()
	for {
		select {
		case se, ok := <-w.events:
			if !ok {
				return time.Time{}, fmt.Errorf("feed closed: %w", w.feed.Err())
			}
			if se.ev.ID == w2Record && se.ev.Origin == replica.Remote && se.ev.Heads.Equal(h) {
				return se.at, nil
			}
		case <-t.C:
			return time.Time{}, fmt.Errorf("not seen within %s", w2Wait)
		case <-w.ctx.Done():
			return time.Time{}, w.ctx.Err()
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
