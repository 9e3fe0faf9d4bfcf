package relay

import (
	"context"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// What the tests in package relay_test reach of the Server's insides: the
// hooks they wait on, and state they check is released.

const (
	MaxMerges       = maxMerges
	UsageRefresh    = usageRefresh
	CompactBatch    = compactBatch
	CompactRetryMin = compactRetryMin
	SavedGrowth     = savedGrowth
)

// SizeSaves is how many times a push saved a record's document whole to
// check max_record.
func (s *Server) SizeSaves() int64 {
	var m dto.Metric
	if err := s.metrics.recordSaves.Write(&m); err != nil {
		panic(err)
	}
	return int64(m.GetCounter().GetValue())
}

// SetGroupCaps sets the caps of one group commit (see nextGroup).
func (s *Server) SetGroupCaps(bytes, entries int) { s.groupBytes, s.groupEntries = bytes, entries }

// CompactRecord compacts one record now.
func (s *Server) CompactRecord(ctx context.Context, c Coll, id string) error {
	return s.compactRecord(ctx, c, id)
}

// SetSweepInterval sets how often a shared store's heads are swept, and
// returns a func that sets it back.
func SetSweepInterval(d time.Duration) (restore func()) {
	old := sweepInterval
	sweepInterval = d
	return func() { sweepInterval = old }
}

// The hooks of Server.hooks, to set before the Server is used.
func (s *Server) HookLeaseWaiting() *func(Coll) { return &s.hooks.leaseWaiting }
func (s *Server) HookSessionEnded() *func()     { return &s.hooks.sessionEnded }
func (s *Server) HookNewTimer() *func(time.Duration) (<-chan time.Time, func() bool) {
	return &s.hooks.newTimer
}

// SetQueuedHook sets the hook c's committer calls with the pushes queued.
func (s *Server) SetQueuedHook(c Coll, f func(int)) {
	cm := s.committer(c)
	cm.mu.Lock()
	cm.queuedHook = f
	cm.mu.Unlock()
}

// FailingRecords is how many records the compactor holds as failing.
func (s *Server) FailingRecords() int { return len(s.compactor.failingRecords()) }

// SetCompactPace sets how long the compactor leaves a record it compacted
// before it takes it again (see compactor.paced).
func (s *Server) SetCompactPace(d time.Duration) { s.compactor.pace = d }

// CompactRound runs one round of background compaction.
func (s *Server) CompactRound(ctx context.Context) (int, error) { return s.compactor.round(ctx) }

// PushState is the committers and per-collection push counts held.
func (s *Server) PushState() (committers, pushes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.committers), len(s.pushes)
}

// HubSizes is the collections the lease and live hubs hold.
func (s *Server) HubSizes() (leases, live int) { return s.leases.size(), s.hub.size() }

// DocCacheSize is what the documents in the Server's document cache count
// for.
func (s *Server) DocCacheSize() int64 { return s.docs.Size() }

// DocCacheLen is how many documents the Server's document cache holds.
func (s *Server) DocCacheLen() int { return s.docs.Len() }

// CachedHeads is the heads of the record's document in the Server's
// document cache, or nil.
func (s *Server) CachedHeads(c Coll, record string) crdt.Heads {
	if rd, ok := s.docs.Peek(recordKey{c, record}); ok {
		return rd.doc.Heads()
	}
	return nil
}

// Clock is the Server's clock.
func (s *Server) Clock() time.Time { return s.now() }

// Watching reports whether the Server watches its store's events.
func (s *Server) Watching() bool { return s.watch != nil }

// Sweep runs one sweep of the store watch.
func (s *Server) Sweep(ctx context.Context) { s.watch.sweep(ctx) }

// CountRequest counts a request in the metrics.
func (s *Server) CountRequest(typ transport.MessageType, code transport.Code, elapsed time.Duration) {
	s.metrics.request(typ, code, elapsed)
}

// CachedDeferred reports whether the record's document in the Server's
// document cache is there and has not built its Automerge document (see
// crdt.NewDeferred).
func (s *Server) CachedDeferred(c Coll, record string) bool {
	rd, ok := s.docs.Peek(recordKey{c, record})
	return ok && rd.doc.Deferred()
}

// MemoryInUse is what the Server's memory budget counts in use now.
func (s *Server) MemoryInUse() int64 { return s.mem.inUse() }

// MemoryPeak is the most the Server's memory budget counted in use since
// the last call.
func (s *Server) MemoryPeak() int64 { return s.mem.peakUse() }

// HoldMemory takes n bytes of the Server's memory budget, without
// waiting, until release is called.
func (s *Server) HoldMemory(n int64) (release func()) { return s.mem.charge(n).release }
