package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// A record whose compaction fails (its stored bytes do not load, or the
// store refuses its snapshot) would fail again at every round, and stay
// first in line: the store lists candidates in an order of its own, so
// enough such records would fill every round and stop compaction for every
// tenant. The compactor remembers each failing record and leaves it alone
// for a while, doubling the wait at each failure, and asks the store for
// as many more candidates as it is leaving alone. Failing records are
// counted in ferry_relay_compaction_failing_records, logged at WARN once
// when they first fail and at INFO when they compact again, and listed by
// `ferry inspect --relay` (see CheckCompaction).

const (
	// compactRetryMin and compactRetryMax bound the wait before a failing
	// record is tried again.
	compactRetryMin = time.Minute
	compactRetryMax = time.Hour
	// maxSkipped bounds the failing records a round asks the store to
	// list beyond its batch: past that many, the others are tried again
	// once they reach the front of the store's order.
	maxSkipped = 16 << 10
)

// compactFailure is a record whose compaction failed, as the compactor
// remembers it.
type compactFailure struct {
	err   error
	fails int
	retry time.Time // not tried again before
}

// failed records a failed compaction (or an unreadable record a pull
// skipped) of k at now, and reports whether it is the record's first.
// The caller holds no lock.
func (cp *compactor) failed(k recordKey, err error, now time.Time) bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	f, seen := cp.failing[k]
	if !seen {
		f = &compactFailure{}
		cp.failing[k] = f
	}
	f.err, f.fails = err, f.fails+1
	wait := compactRetryMin << min(f.fails-1, 10)
	f.retry = now.Add(min(wait, compactRetryMax))
	return !seen
}

// recovered forgets k's failures, and reports whether it had any.
func (cp *compactor) recovered(k recordKey) bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	_, ok := cp.failing[k]
	delete(cp.failing, k)
	return ok
}

// waiting reports whether k failed and is not due for another try at now.
func (cp *compactor) waiting(k recordKey, now time.Time) bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	f, ok := cp.failing[k]
	return ok && now.Before(f.retry)
}

// damaged reports whether k is remembered as failing because its stored
// bytes do not load.
func (cp *compactor) damaged(k recordKey) bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	f, ok := cp.failing[k]
	return ok && errors.Is(f.err, ErrStoreDamaged)
}

// waitingCount counts the failing records not due for another try at now.
func (cp *compactor) waitingCount(now time.Time) int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	n := 0
	for _, f := range cp.failing {
		if now.Before(f.retry) {
			n++
		}
	}
	return n
}

func (cp *compactor) failingCount() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return len(cp.failing)
}

// reportFailure logs a record whose compaction failed, or that a pull
// skipped, at WARN the first time, and remembers it.
func (s *Server) reportFailure(c Coll, id, what string, err error) {
	if s.compactor.failed(recordKey{c, id}, err, s.now()) {
		s.log.Warn(what+"; it is tried again later, and meanwhile it is not compacted and pins its collection's log", "tenant", c.Tenant, "collection", c.Collection, "record", id, "err", err)
	}
}

// CompactionFailure is a record that cannot be compacted, as
// CheckCompaction finds it.
type CompactionFailure struct {
	Coll   Coll
	Record string
	Err    error
}

// CheckCompaction reads every record of store that needs compacting, as
// the compactor would, and returns those that cannot be compacted: their
// stored bytes do not load as an Automerge document, or load at other
// heads than the store records. It writes nothing. Each such record keeps
// its collection's log from being truncated past its first tail entry, and
// is left out of fresh devices' first pulls when it is over max_record.
// Errors wrapping ErrStoreDamaged are the records' own; any other error
// ends the check.
func CheckCompaction(ctx context.Context, store Store) ([]CompactionFailure, error) {
	cands, err := store.CompactionCandidates(ctx, 1<<30)
	if err != nil {
		return nil, err
	}
	var out []CompactionFailure
	for _, cd := range cands {
		rec, err := store.Record(ctx, cd.Coll, cd.Record)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err == nil {
			err = checkLoads(cd.Coll, rec)
		}
		if errors.Is(err, ErrStoreDamaged) {
			out = append(out, CompactionFailure{Coll: cd.Coll, Record: cd.Record, Err: err})
			continue
		}
		if err != nil {
			return out, err
		}
	}
	slices.SortFunc(out, func(a, b CompactionFailure) int {
		return cmp.Or(cmp.Compare(a.Coll.Tenant, b.Coll.Tenant), cmp.Compare(a.Coll.Collection, b.Coll.Collection), cmp.Compare(a.Record, b.Record))
	})
	return out, nil
}

// loadStored loads rec's stored bytes, checking them against its heads.
// The caller frees the document.
func loadStored(c Coll, rec Record) (*crdt.Doc, error) {
	d, err := crdt.Load(rec.Data(), "")
	if err != nil {
		return nil, fmt.Errorf("%w: record %s/%s/%s: %w", ErrStoreDamaged, c.Tenant, c.Collection, rec.ID, err)
	}
	if h := d.Heads(); !h.Equal(rec.Heads) {
		d.Free()
		return nil, fmt.Errorf("%w: record %s/%s/%s: it loads at heads %v, the store says %v", ErrStoreDamaged, c.Tenant, c.Collection, rec.ID, h, rec.Heads)
	}
	return d, nil
}

func checkLoads(c Coll, rec Record) error {
	d, err := loadStored(c, rec)
	if err == nil {
		d.Free()
	}
	return err
}

// failingRecords lists the records the compactor remembers as failing, for
// tests.
func (cp *compactor) failingRecords() []recordKey {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return slices.SortedFunc(maps.Keys(cp.failing), compareRecordKeys)
}
