package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/replica"
)

// W1 is bulk sync: a durable replica on disk inserts Records products in
// units of work of 100 (timed as insert), pushes them all to the relay with
// a manual two-way sync (push), and a fresh replica pulls them all
// (fresh_pull). It reports the relay's peak memory and the bytes each
// phase moved.
func W1(ctx context.Context, cfg Config) (res *Result, err error) {
	cfg, res, cleanup, err := prepare(ctx, cfg, "W1")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	start := time.Now()
	b, err := bulk(ctx, cfg, cfg.Records, "W1")
	if err != nil {
		return nil, err
	}
	n := b.n
	res.add(Metric{Name: "records", Value: float64(n), Unit: "count"})
	res.time("insert", b.insert, n, "records/s")
	res.time("push", b.push, n, "changes/s")
	res.phaseBytes(b.env, "push", b.before, b.pushed, n, n, mBytesIn)
	relayPush := time.Duration(b.pushed.since(b.before, mPushSeconds) * float64(time.Second))
	res.add(Metric{Name: "push_relay_time", Value: relayPush.Seconds(), Unit: "s", Ratio: res.Floor.TimeRatio(n, relayPush.Seconds()),
		Note: fmt.Sprintf("the relay's time answering the %v pushes (relay /metrics ferry_relay_request_seconds); the rest is the replica's and the wire's", b.pushed.since(b.before, mPushes))})
	res.time("fresh_pull", b.pull, n, "records/s")
	res.phaseBytes(b.env, "fresh_pull", b.pushed, b.pulled, n, n, mBytesOut)
	res.memory("", b.mem, 0)
	res.Notes = append(res.Notes,
		"insert: durable replica on disk, units of work of 100 records (one fsync each)",
		"push and fresh_pull: one manual two-way sync each (lease, pull, push); the fresh replica gets snapshots",
		"ratios of time: W0's time for the same number of changes / this time; of bytes: W0's raw change bytes / these bytes")
	res.Elapsed = time.Since(start)
	return res, nil
}

// bulkRun is what one bulk sync measured.
type bulkRun struct {
	n                      int
	insert, push, pull     time.Duration
	before, pushed, pulled snapshot
	mem                    memStats
	env                    *relayEnv // closed; for its mode and meters' notes
}

// bulk runs W1's procedure with n records, in dir/label.
func bulk(ctx context.Context, cfg Config, n int, label string) (b *bulkRun, err error) {
	dir := filepath.Join(cfg.Dir, fmt.Sprintf("%s-%d", label, n))
	env, err := startRelay(ctx, cfg.Relay, dir)
	if err != nil {
		return nil, err
	}
	defer closeAll(&err, env.close)
	b = &bulkRun{n: n, env: env}
	pr := newProgress(cfg.Progress)

	w, err := env.openReplica(dir, "writer", syncProgress(pr, fmt.Sprintf("%s push of %d", label, n)))
	if err != nil {
		return nil, err
	}
	defer closeAll(&err, w.Close)
	coll := collName("w1")
	ps := products(cfg.Seed, floorStream, n)
	t0 := time.Now()
	ids, err := insertAll(w, coll, ps, func(done int) {
		pr.report(done == n, "%s: inserted %d/%d records", label, done, n)
	})
	if err != nil {
		return nil, err
	}
	b.insert = time.Since(t0)

	if err := env.addProfile(w, coll, policy.Manual, true); err != nil {
		return nil, err
	}
	env.mem.reset()
	if b.before, err = env.snapshot(ctx); err != nil {
		return nil, err
	}
	t0 = time.Now()
	st, err := w.Sync(ctx, profileName)
	b.push = time.Since(t0)
	if err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	if got := collStats(st).ToRelay.Added; got != n {
		return nil, checkf("push added %d records to the relay, want %d", got, n)
	}
	if b.pushed, err = env.snapshot(ctx); err != nil {
		return nil, err
	}

	if err := b.freshPull(ctx, dir, coll, syncProgress(pr, fmt.Sprintf("%s fresh pull of %d", label, n)), func(fresh *replica.Replica) error {
		if cfg.Verify {
			return verifyBulk(fresh, coll, ids, ps)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return b, nil
}

// insertAll inserts ps into coll of w, 100 per unit of work, calling
// progress after each; it returns the records' IDs.
func insertAll(w *replica.Replica, coll string, ps []Product, progress func(done int)) ([]string, error) {
	n := len(ps)
	ids := make([]string, 0, n)
	for len(ids) < n {
		from := len(ids)
		err := w.Write(func(tx *replica.Tx) error {
			for i := from; i < min(from+100, n); i++ {
				id, err := tx.Insert(coll, ps[i])
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("insert: %w", err)
		}
		progress(len(ids))
	}
	return ids, nil
}

// freshPull times a new replica's first sync of coll, which must bring
// every record, then takes the relay's meters and peak memory; check
// looks at the replica before it closes.
func (b *bulkRun) freshPull(ctx context.Context, dir, coll string, l replica.Listener, check func(*replica.Replica) error) (err error) {
	fresh, err := b.env.openReplica(dir, "fresh", l)
	if err != nil {
		return err
	}
	defer closeAll(&err, fresh.Close)
	if err := b.env.addProfile(fresh, coll, policy.Manual, true); err != nil {
		return err
	}
	t0 := time.Now()
	st, err := fresh.Sync(ctx, profileName)
	b.pull = time.Since(t0)
	if err != nil {
		return fmt.Errorf("fresh pull: %w", err)
	}
	if got := collStats(st).FromRelay.Added; got != b.n {
		return checkf("fresh pull added %d records, want %d", got, b.n)
	}
	if b.pulled, err = b.env.snapshot(ctx); err != nil {
		return err
	}
	b.mem = b.env.mem.peak()
	return check(fresh)
}

// verifyBulk checks that r holds exactly the records ids with the fields
// of ps, none of them pending.
func verifyBulk(r *replica.Replica, coll string, ids []string, ps []Product) error {
	c := r.Collection(coll)
	var recs []replica.Record
	for rec, err := range c.Scan(replica.ScanOptions{}) {
		if err != nil {
			return err
		}
		recs = append(recs, rec)
	}
	if len(recs) != len(ids) {
		return checkf("fresh replica holds %d records, want %d", len(recs), len(ids))
	}
	byID := make(map[string]map[string]any, len(recs))
	for _, rec := range recs {
		byID[rec.ID] = rec.Fields
	}
	for i, id := range ids {
		f, ok := byID[id]
		if !ok {
			return checkf("fresh replica lacks record %s", id)
		}
		if err := ps[i].equalFields(f); err != nil {
			return checkf("record %s: %v", id, err)
		}
	}
	if n, err := c.PendingCount(); err != nil || n != 0 {
		return checkf("fresh replica has %d pending records (%v), want 0", n, err)
	}
	return nil
}
