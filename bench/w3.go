package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/replica"
)

// w3MaxSyncs bounds the syncs W3 waits for convergence.
const w3MaxSyncs = 9

// spanW3Sync is one of W3's merge syncs, timed.
const spanW3Sync = "W3 sync"

// W3 is an offline merge: replicas A and B (durable, on disk) share
// MergeRecords records, then each makes Updates offline edits (one unit
// of work each) over all of them, on the same four fields (name, price,
// qty, updated), so many edits conflict. Then A syncs, B syncs, A syncs
// (manual two-way, prefer-local), and more alternating syncs if needed,
// until every record has the same heads on both. The merge time is the
// syncs' time; its ratio is to raw automerge-go applying each side's
// edits to the other's documents (Result.EditFloor).
func W3(ctx context.Context, cfg Config) (res *Result, err error) {
	cfg, res, cleanup, err := prepare(ctx, cfg, "W3")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	start := time.Now()
	ef, err := w3Floor(ctx, cfg)
	if err != nil {
		return nil, err
	}
	res.EditFloor = &ef
	dir := filepath.Join(cfg.Dir, "W3")
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
	coll := collName("w3")
	for _, r := range []*replica.Replica{a, b} {
		if err := env.addProfile(r, coll, policy.Manual, false); err != nil {
			return nil, err
		}
	}

	// The shared starting point.
	m := cfg.MergeRecords
	ids := make([]string, m)
	ps := products(cfg.Seed, 3, m)
	err = a.Write(func(tx *replica.Tx) error {
		for i := range ids {
			ids[i] = fmt.Sprintf("rec-%05d", i)
			if err := tx.Create(coll, ids[i], ps[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, r := range []*replica.Replica{a, b} {
		if _, err := r.Sync(ctx, profileName); err != nil {
			return nil, fmt.Errorf("initial sync: %w", err)
		}
	}

	// Offline edits.
	pr := newProgress(cfg.Progress)
	var editTime [2]time.Duration
	for k, r := range []*replica.Replica{a, b} {
		if editTime[k], err = offlineEdits(r.Collection(coll), cfg, k, ids, pr); err != nil {
			return nil, err
		}
	}
	merge, syncs, conflicts, err := mergeSyncs(ctx, a, b, coll, ids)
	if err != nil {
		return nil, err
	}
	if cfg.Verify {
		if err := sameFields(a, b, coll, ids); err != nil {
			return nil, err
		}
	}
	edits := 2 * cfg.Updates
	res.add(Metric{Name: "records", Value: float64(m), Unit: "count"})
	res.add(Metric{Name: "offline_edits", Value: float64(edits), Unit: "count", Note: "both replicas together"})
	res.timeVs("offline_edit", editTime[0], cfg.Updates, "edits/s", nil)
	// The merge moves the edits that changed something: an edit that set
	// a field to the value it held made no change, here as in the floor.
	res.timeVs("merge", merge, ef.Changes, "edits/s", &ef)
	res.add(Metric{Name: "floor_merge", Value: ef.Seconds, Unit: "s",
		Note: "raw automerge-go applying each side's edits to documents holding the other's, one change at a time; median run"})
	res.add(Metric{Name: "syncs", Value: float64(syncs), Unit: "count", Note: "alternating A, B, A, ... until every record's heads match"})
	res.add(Metric{Name: "conflicts", Value: float64(conflicts), Unit: "count", Note: "resolved by prefer-local, from SyncStats"})
	res.Notes = append(res.Notes,
		"offline_edit: replica A's edits, one durable unit of work each (one fsync each)",
		"merge: the syncs' time (durable replicas and relay); ratio: floor_merge / the merge time")
	if n := env.devicesNote(); n != "" {
		res.Notes = append(res.Notes, n)
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// offlineEdits makes cfg.Updates random single-field edits to c's records,
// each a durable unit of work, as replica k (0 for A, 1 for B); it returns
// their time.
func offlineEdits(c *replica.Collection, cfg Config, k int, ids []string, pr *progress) (time.Duration, error) {
	p := newW3Picker(cfg.Seed, k)
	t0 := time.Now()
	for e := range cfg.Updates {
		i, field, val := p.next(len(ids))
		id := ids[i]
		if err := c.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{field}, val) }); err != nil {
			return 0, fmt.Errorf("offline edit: %w", err)
		}
		pr.report(e == cfg.Updates-1, "W3: replica %c: %d/%d offline edits", 'A'+k, e+1, cfg.Updates)
	}
	return time.Since(t0), nil
}

// mergeSyncs syncs A, B, A, ... until every record's heads match: the
// merge. It returns the syncs' time, their number and the conflicts they
// resolved.
func mergeSyncs(ctx context.Context, a, b *replica.Replica, coll string, ids []string) (merge time.Duration, syncs, conflicts int, err error) {
	order := []*replica.Replica{a, b}
	converged := false
	for !converged && syncs < w3MaxSyncs {
		r := order[syncs%2]
		t0 := edge(spanW3Sync, true)
		st, err := r.Sync(ctx, profileName)
		merge += edge(spanW3Sync, false).Sub(t0)
		syncs++
		if err != nil {
			return 0, 0, 0, fmt.Errorf("merge sync %d: %w", syncs, err)
		}
		conflicts += collStats(st).Conflicts
		if syncs < 3 {
			continue // A, B, A at least: B's resolutions must reach A
		}
		if converged, err = sameHeads(a, b, coll, ids); err != nil {
			return 0, 0, 0, err
		}
	}
	if !converged {
		return 0, 0, 0, checkf("not converged after %d syncs", syncs)
	}
	return merge, syncs, conflicts, nil
}

// randomEdit picks one of the fields both replicas edit, and a new value.
func randomEdit(rng *rand.Rand) (string, any) {
	switch rng.IntN(4) {
	case 0:
		return "name", randomProduct(rng, 0).Name
	case 1:
		return "price", float64(rng.IntN(100_000)) / 100
	case 2:
		return "qty", rng.IntN(1000)
	}
	return "updated", 1_700_000_000_000 + rng.Int64N(1_000_000)
}

// sameHeads reports whether every record has the same heads on a and b.
func sameHeads(a, b *replica.Replica, coll string, ids []string) (bool, error) {
	ca := a.Collection(coll)
	cb := b.Collection(coll)
	for _, id := range ids {
		ha, err := ca.Heads(id)
		if err != nil {
			return false, err
		}
		hb, err := cb.Heads(id)
		if err != nil {
			return false, err
		}
		if !ha.Equal(hb) {
			return false, nil
		}
	}
	return true, nil
}

// sameFields checks that every record reads the same on a and b.
func sameFields(a, b *replica.Replica, coll string, ids []string) error {
	ca := a.Collection(coll)
	cb := b.Collection(coll)
	for _, id := range ids {
		var fa, fb map[string]any
		if err := ca.Get(id, &fa); err != nil {
			return err
		}
		if err := cb.Get(id, &fb); err != nil {
			return err
		}
		for k, v := range fa {
			if !crdt.Equal(v, fb[k]) {
				return checkf("record %s field %s: A has %v, B has %v", id, k, v, fb[k])
			}
		}
		if len(fa) != len(fb) {
			return checkf("record %s: A has %d fields, B has %d", id, len(fa), len(fb))
		}
	}
	return nil
}
