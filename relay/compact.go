package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ferrysync/ferry/transport"
)

// Compaction keeps reading a record cheap without touching the push path:
// a push only appends its changes to the record's tail, and in the
// background the compactor folds a tail that has outgrown its snapshot
// (NeedsCompaction) into a new snapshot, in bounded batches. Then the log
// below a horizon that every snapshot holds is truncated, keeping the
// last LogRetention entries of each collection, so that a device that was
// offline a while still catches up from the log.

// compactBatch bounds the records one compaction round takes on.
const compactBatch = 64

// compactor owns the background compaction and truncation.
type compactor struct {
	s    *Server
	wake chan struct{} // a push made a candidate, or a test asks

	mu      sync.Mutex
	touched map[Coll]bool                 // collections appended to since the last truncation
	failing map[recordKey]*compactFailure // see compactfail.go

	stop context.CancelFunc
	done chan struct{}
}

func newCompactor(s *Server) *compactor {
	ctx, cancel := context.WithCancel(context.Background())
	cp := &compactor{s: s, wake: make(chan struct{}, 1), touched: map[Coll]bool{}, failing: map[recordKey]*compactFailure{}, stop: cancel, done: make(chan struct{})}
	if s.opts.CompactInterval < 0 {
		close(cp.done)
		return cp
	}
	go cp.run(ctx)
	return cp
}

// appended tells the compactor a collection grew.
func (cp *compactor) appended(c Coll) {
	cp.mu.Lock()
	cp.touched[c] = true
	cp.mu.Unlock()
	select {
	case cp.wake <- struct{}{}:
	default:
	}
}

// close stops the compactor and waits for it.
func (cp *compactor) close() {
	cp.stop()
	<-cp.done
}

func (cp *compactor) run(ctx context.Context) {
	defer close(cp.done)
	t := time.NewTicker(cp.s.opts.CompactInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-cp.wake:
		}
		// A round at a time, with the ticker between rounds, so that a
		// relay under a stream of pushes does not spend every cycle
		// compacting.
		if _, err := cp.round(ctx); err != nil && ctx.Err() == nil {
			cp.s.log.Warn("compaction round failed", "err", err)
		}
	}
}

// round compacts up to compactBatch candidates, leaving alone records
// whose compaction failed lately (see compactfail.go), then truncates the
// logs of the collections appended to since the last round. It returns
// how many records it compacted.
func (cp *compactor) round(ctx context.Context) (int, error) {
	s := cp.s
	now := s.now()
	cands, err := s.store.CompactionCandidates(ctx, compactBatch+min(cp.waitingCount(now), maxSkipped))
	if err != nil {
		return 0, err
	}
	n, tried := 0, 0
	for _, cd := range cands {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		k := recordKey{cd.Coll, cd.Record}
		if cp.waiting(k, now) {
			continue
		}
		if tried == compactBatch {
			break
		}
		tried++
		err := s.compactRecord(ctx, cd.Coll, cd.Record)
		switch {
		case err == nil:
			n++
			if cp.recovered(k) {
				s.log.Info("a record whose compaction failed was compacted", "tenant", cd.Coll.Tenant, "collection", cd.Coll.Collection, "record", cd.Record)
			}
		case errors.Is(err, ErrConflict), errors.Is(err, ErrNotFound):
			// Another compaction won, or the record is gone: nothing to do.
			cp.recovered(k)
		case errors.Is(err, transport.ErrBusy):
			// No room in the memory budget now: the record is still
			// due, and a round after the next tick tries again, rather
			// than competing with pushes for memory.
			return n, cp.truncate(ctx)
		case ctx.Err() != nil:
			return n, ctx.Err()
		default:
			s.reportFailure(cd.Coll, cd.Record, "compacting a record failed", err)
		}
	}
	if tried == compactBatch {
		select { // more wait: go on at the next tick or wake-up
		case cp.wake <- struct{}{}:
		default:
		}
	}
	return n, cp.truncate(ctx)
}

// truncate drops, in each collection appended to lately, the log entries
// older than the last LogRetention that snapshots hold.
func (cp *compactor) truncate(ctx context.Context) error {
	s := cp.s
	if s.opts.LogRetention < 0 {
		return nil
	}
	cp.mu.Lock()
	colls := cp.touched
	cp.touched = map[Coll]bool{}
	cp.mu.Unlock()
	for c := range colls {
		head, err := s.store.Head(ctx, c)
		if err != nil {
			return err
		}
		keep := uint64(s.opts.LogRetention)
		if head <= keep {
			continue
		}
		if _, err := s.store.Truncate(ctx, c, head-keep); err != nil {
			return fmt.Errorf("truncating %s/%s: %w", c.Tenant, c.Collection, err)
		}
	}
	return nil
}

// compactRecord folds a record's tail into a new snapshot.
func (s *Server) compactRecord(ctx context.Context, c Coll, id string) error {
	rec, err := s.store.Record(ctx, c, id)
	if err != nil {
		return err
	}
	if rec.TailEntries == 0 {
		return nil
	}
	_, err = s.compactNow(ctx, c, rec, false)
	return err
}

// compactNow saves rec as one document, stores that as its snapshot, and
// returns it. Only the record's own bytes are read: no cached document,
// no lock, so pushes to it go on meanwhile. The document is loaded within
// the memory budget, waiting for room if wait says so, else refused with
// busy at once.
func (s *Server) compactNow(ctx context.Context, c Coll, rec Record, wait bool) ([]byte, error) {
	d, g, err := s.loadCounted(ctx, c, rec, false, wait, loadStored)
	if err != nil {
		return nil, err
	}
	// Loaded for this once: its memory goes back now, not whenever a
	// finalizer runs.
	defer g.release()
	defer d.Free()
	snap := d.Save()
	if err := s.store.Compact(ctx, c, rec.ID, snap, rec.Seq); err != nil && !errors.Is(err, ErrConflict) {
		return nil, err
	}
	s.metrics.compactions.Inc()
	return snap, nil
}
