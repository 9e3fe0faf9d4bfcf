package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// Compaction keeps reading a record cheap without touching the push path:
// a push only appends its changes to the record's tail, and in the
// background the compactor folds a tail that has outgrown its snapshot
// (NeedsCompaction) into a new snapshot, in bounded batches. Then the log
// below a horizon that every snapshot holds is truncated, keeping the
// last LogRetention entries of each collection, so that a device that was
// offline a while still catches up from the log.
//
// A record being edited live crosses NeedsCompaction every few dozen
// small edits. Two things keep it from costing the live path its cores:
// a record whose document the relay holds in memory as stored is saved
// from it (compactNow), rather than its stored bytes loaded again, which
// costs far more than the save (Automerge recomputes every change's hash
// as it loads); and the background compactor takes a record again only
// once CompactInterval has passed since it last did (paced), so a record
// edited without pause is compacted once per interval, its tail bounded
// by what it gains in one.

// compactBatch bounds the records one compaction round takes on.
const compactBatch = 64

// compactor owns the background compaction and truncation.
type compactor struct {
	s    *Server
	wake chan struct{} // a push made a candidate, or a test asks

	mu      sync.Mutex
	touched map[Coll]bool                 // collections appended to since the last truncation
	failing map[recordKey]*compactFailure // see compactfail.go
	// paced holds when the background compactor last compacted each
	// record, for the last pace: a record compacted since then waits for
	// a later round. No pacing when pace is 0 or less.
	paced map[recordKey]time.Time
	pace  time.Duration

	stop context.CancelFunc
	done chan struct{}
}

func newCompactor(s *Server) *compactor {
	ctx, cancel := context.WithCancel(context.Background())
	cp := &compactor{s: s, wake: make(chan struct{}, 1), touched: map[Coll]bool{}, failing: map[recordKey]*compactFailure{},
		paced: map[recordKey]time.Time{}, pace: s.opts.CompactInterval, stop: cancel, done: make(chan struct{})}
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
	cands, err := s.store.CompactionCandidates(ctx, compactBatch+min(cp.waitingCount(now)+cp.pacedCount(now), maxSkipped))
	if err != nil {
		return 0, err
	}
	n, tried := 0, 0
	for _, cd := range cands {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		k := recordKey{cd.Coll, cd.Record}
		if cp.waiting(k, now) || cp.resting(k, now) {
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
			cp.compacted(k, now)
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

// resting reports whether the compactor compacted k less than a pace
// before now.
func (cp *compactor) resting(k recordKey, now time.Time) bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	at, ok := cp.paced[k]
	return ok && now.Before(at.Add(cp.pace))
}

// compacted records that k was compacted at now, and forgets records
// whose pace is over. Its collection's log may now be truncated further:
// it is truncated at the end of the round, appended to since or not (a
// record left resting is compacted by a later round than its appends).
func (cp *compactor) compacted(k recordKey, now time.Time) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.touched[k.c] = true
	if cp.pace <= 0 {
		return
	}
	for r, at := range cp.paced {
		if !now.Before(at.Add(cp.pace)) {
			delete(cp.paced, r)
		}
	}
	cp.paced[k] = now
}

// pacedCount counts the records resting at now: the store lists them
// as candidates, and a round asks for as many more.
func (cp *compactor) pacedCount(now time.Time) int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	n := 0
	for _, at := range cp.paced {
		if now.Before(at.Add(cp.pace)) {
			n++
		}
	}
	return n
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
	if snap, ahead := s.savedCached(recordKey{c, id}, rec.Heads); snap == nil && ahead {
		// A push landed since the read: read the record again, once, to
		// save it from memory rather than load it.
		if rec, err = s.store.Record(ctx, c, id); err != nil {
			return err
		}
	} else if snap != nil {
		return s.storeSnapshot(ctx, c, rec, snap)
	}
	_, err = s.compactNow(ctx, c, rec, false)
	return err
}

// compactNow saves rec as one document, stores that as its snapshot, and
// returns it. A record whose document is cached as stored at rec's heads
// is saved from it (savedCached); any other is loaded from its own bytes,
// with no lock, so pushes to it go on meanwhile, within the memory
// budget, waiting for room if wait says so, else refused with busy at
// once.
func (s *Server) compactNow(ctx context.Context, c Coll, rec Record, wait bool) ([]byte, error) {
	snap, _ := s.savedCached(recordKey{c, rec.ID}, rec.Heads)
	if snap == nil {
		d, g, err := s.loadCounted(ctx, c, rec, false, wait, loadStored)
		if err != nil {
			return nil, err
		}
		snap = d.Save()
		// Loaded for this once: its memory goes back now, not whenever a
		// finalizer runs.
		d.Free()
		g.release()
	}
	return snap, s.storeSnapshot(ctx, c, rec, snap)
}

// storeSnapshot stores snap, rec saved, as its snapshot.
func (s *Server) storeSnapshot(ctx context.Context, c Coll, rec Record, snap []byte) error {
	if err := s.store.Compact(ctx, c, rec.ID, snap, rec.Seq); err != nil && !errors.Is(err, ErrConflict) {
		return err
	}
	s.metrics.compactions.Inc()
	return nil
}

// savedCached returns the record's cached document saved, if it is the
// record as stored at heads: not queued (merged with changes not yet
// durable), not dropped, and at exactly those heads, which name every
// change it holds. A deferred document is not built for it (building
// loads what the store's bytes would), so nil then, as when the record is
// not cached; ahead says a built document was cached at other heads
// (queued, or a push landed since heads were read). The record's lock is
// held through the save, which costs a small part of a load (see the top
// of this file).
func (s *Server) savedCached(key recordKey, heads crdt.Heads) (snap []byte, ahead bool) {
	defer s.recLocks.Lock(key)()
	// Pinned, not marked used: compacting a record does not keep it
	// cached.
	rd, ok := s.docs.Peek(key)
	if !ok {
		return nil, false
	}
	unpin, ok := s.docs.Pin(key, rd)
	if !ok {
		return nil, false
	}
	defer unpin()
	if rd.dropped.Load() || rd.doc.Deferred() {
		return nil, false
	}
	if s.queuedDoc(key) || !rd.doc.Heads().Equal(heads) {
		return nil, true
	}
	return rd.doc.Save(), false
}
