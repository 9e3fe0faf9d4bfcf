package relay

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/google/uuid"
)

// MemStore is a Store held in memory, for tests and the dev mode. Nothing
// survives Close. One mutex guards everything, so every method is safe for
// concurrent use and each is atomic; it is simple rather than fast.
type MemStore struct {
	incarnation string

	mu     sync.Mutex
	closed bool
	colls  map[Coll]*memColl
}

var _ Store = (*MemStore)(nil)

// memColl is one collection's state. Byte slices are copied on the way in
// and out, so callers can never alias the store's data.
type memColl struct {
	log      []LogEntry // log[i].Seq == horizon+i+1
	horizon  uint64     // entries up to it are truncated
	docs     map[string]*memDoc
	lease    *Lease // nil when released or never taken
	maxFence uint64 // highest fence ever granted; never decreases
}

// memDoc is a record: its snapshot, and the log entries of its tail.
type memDoc struct {
	heads   crdt.Heads
	seq     uint64
	snap    []byte
	snapSeq uint64
	tail    []LogEntry
}

func (d *memDoc) tailBytes() (n int64) {
	for _, e := range d.tail {
		n += int64(len(e.Changes))
	}
	return n
}

func (d *memDoc) record(id string) Record {
	r := Record{ID: id, Heads: slices.Clone(d.heads), Seq: d.seq, Snapshot: bytes.Clone(d.snap), SnapSeq: d.snapSeq, TailEntries: len(d.tail)}
	for _, e := range d.tail {
		r.Tail = append(r.Tail, e.Changes...)
	}
	return r
}

// NewMemStore returns an empty in-memory store with a random incarnation.
func NewMemStore() *MemStore {
	return &MemStore{
		incarnation: uuid.NewString(),
		colls:       make(map[Coll]*memColl),
	}
}

// Incarnation implements Store.
func (s *MemStore) Incarnation() string { return s.incarnation }

// lock takes the store's mutex after the checks every method starts with.
// On success the caller must unlock s.mu.
func (s *MemStore) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrStoreClosed
	}
	return nil
}

// coll returns c's state, creating it when create is set; nil otherwise.
func (s *MemStore) coll(c Coll, create bool) *memColl {
	mc := s.colls[c]
	if mc == nil && create {
		mc = &memColl{docs: make(map[string]*memDoc)}
		s.colls[c] = mc
	}
	return mc
}

// Append implements Store.
func (s *MemStore) Append(ctx context.Context, c Coll, fence uint64, now time.Time, entries []Entry) (uint64, error) {
	if err := checkColl(c); err != nil {
		return 0, err
	}
	if err := checkEntries(entries); err != nil {
		return 0, err
	}
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, true)
	if fence != 0 && (mc.lease == nil || mc.lease.Fence != fence || !leaseLive(*mc.lease, now)) {
		return 0, fmt.Errorf("append to %s/%s with fence %d: %w", c.Tenant, c.Collection, fence, ErrStaleFence)
	}
	// Check every Base before writing anything. Entries apply in order, so
	// a second entry for one record is checked against the first's heads.
	pending := make(map[string]crdt.Heads)
	for _, e := range entries {
		cur, ok := pending[e.Record]
		if !ok {
			if d := mc.docs[e.Record]; d != nil {
				cur = d.heads
			}
		}
		if !e.Base.Equal(cur) {
			return 0, &ConflictError{Record: e.Record}
		}
		pending[e.Record] = e.Heads
	}
	for _, e := range entries {
		seq := mc.head() + 1
		le := LogEntry{Seq: seq, Record: e.Record, Changes: bytes.Clone(e.Changes), Heads: slices.Clone(e.Heads)}
		mc.log = append(mc.log, le)
		d := mc.docs[e.Record]
		if d == nil {
			d = &memDoc{}
			mc.docs[e.Record] = d
		}
		d.heads, d.seq = le.Heads, seq
		d.tail = append(d.tail, le)
	}
	return mc.head(), nil
}

func (mc *memColl) head() uint64 { return mc.horizon + uint64(len(mc.log)) }

// Record implements Store.
func (s *MemStore) Record(ctx context.Context, c Coll, record string) (Record, error) {
	if err := s.lock(ctx); err != nil {
		return Record{}, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, false)
	if mc == nil || mc.docs[record] == nil {
		return Record{}, fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, ErrNotFound)
	}
	return mc.docs[record].record(record), nil
}

// Log implements Store.
func (s *MemStore) Log(ctx context.Context, c Coll, after uint64, limit int) ([]LogEntry, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, false)
	if mc == nil || limit <= 0 {
		return nil, nil
	}
	if after < mc.horizon {
		return nil, &TruncatedError{Horizon: mc.horizon}
	}
	if after >= mc.head() {
		return nil, nil
	}
	src := mc.log[after-mc.horizon:]
	src = src[:min(len(src), limit)]
	out := make([]LogEntry, len(src))
	for i, e := range src {
		out[i] = LogEntry{Seq: e.Seq, Record: e.Record, Changes: bytes.Clone(e.Changes), Heads: slices.Clone(e.Heads)}
	}
	return out, nil
}

// Head implements Store.
func (s *MemStore) Head(ctx context.Context, c Coll) (uint64, error) {
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	if mc := s.coll(c, false); mc != nil {
		return mc.head(), nil
	}
	return 0, nil
}

// Records implements Store. It sorts the record IDs on every call: fine
// for tests, not for large collections.
func (s *MemStore) Records(ctx context.Context, c Coll, after string, limit int) ([]Record, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, false)
	if mc == nil || limit <= 0 {
		return nil, nil
	}
	ids := make([]string, 0, len(mc.docs))
	for id := range mc.docs {
		if id > after {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	ids = ids[:min(len(ids), limit)]
	out := make([]Record, len(ids))
	for i, id := range ids {
		out[i] = mc.docs[id].record(id)
	}
	return out, nil
}

// Compact implements Store.
func (s *MemStore) Compact(ctx context.Context, c Coll, record string, snap []byte, upTo uint64) error {
	if err := checkColl(c); err != nil {
		return err
	}
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, false)
	if mc == nil || mc.docs[record] == nil {
		return fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, ErrNotFound)
	}
	d := mc.docs[record]
	if upTo > d.seq || upTo <= d.snapSeq {
		return &ConflictError{Record: record}
	}
	d.snap, d.snapSeq = bytes.Clone(snap), upTo
	i := 0
	for i < len(d.tail) && d.tail[i].Seq <= upTo {
		i++
	}
	d.tail = slices.Clone(d.tail[i:])
	return nil
}

// CompactionCandidates implements Store.
func (s *MemStore) CompactionCandidates(ctx context.Context, limit int) ([]Candidate, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	var out []Candidate
	for c, mc := range s.colls {
		for id, d := range mc.docs {
			if len(out) < limit && NeedsCompaction(int64(len(d.snap)), d.tailBytes(), int64(len(d.tail))) {
				out = append(out, Candidate{Coll: c, Record: id})
			}
		}
	}
	return out, nil
}

// Truncate implements Store.
func (s *MemStore) Truncate(ctx context.Context, c Coll, upTo uint64) (uint64, error) {
	if err := checkColl(c); err != nil {
		return 0, err
	}
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, false)
	if mc == nil {
		return 0, nil
	}
	upTo = min(upTo, mc.head())
	for mc.horizon < upTo {
		e := mc.log[0]
		if d := mc.docs[e.Record]; d != nil && d.snapSeq < e.Seq {
			break // the record's tail still holds it
		}
		mc.log = mc.log[1:]
		mc.horizon++
	}
	mc.log = slices.Clip(mc.log)
	return mc.horizon, nil
}

// Acquire implements Store.
func (s *MemStore) Acquire(ctx context.Context, c Coll, holder string, ttl time.Duration, now time.Time) (Lease, error) {
	if err := checkColl(c); err != nil {
		return Lease{}, err
	}
	if err := checkLeaseArgs(holder, ttl); err != nil {
		return Lease{}, err
	}
	if err := s.lock(ctx); err != nil {
		return Lease{}, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, true)
	if l := mc.lease; l != nil && leaseLive(*l, now) && l.Holder != holder {
		return Lease{}, &LeaseHeldError{Lease: *l}
	}
	mc.maxFence++
	l := Lease{Holder: holder, Fence: mc.maxFence, Expires: now.Add(ttl)}
	mc.lease = &l
	return l, nil
}

// Renew implements Store.
func (s *MemStore) Renew(ctx context.Context, c Coll, holder string, fence uint64, ttl time.Duration, now time.Time) (Lease, error) {
	if err := checkLeaseArgs(holder, ttl); err != nil {
		return Lease{}, err
	}
	if err := s.lock(ctx); err != nil {
		return Lease{}, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, false)
	if mc == nil || mc.lease == nil || mc.lease.Fence != fence || !leaseLive(*mc.lease, now) {
		return Lease{}, fmt.Errorf("renew lease of %s/%s with fence %d: %w", c.Tenant, c.Collection, fence, ErrStaleFence)
	}
	if mc.lease.Holder != holder {
		return Lease{}, fmt.Errorf("renew lease of %s/%s with fence %d: held by another holder: %w", c.Tenant, c.Collection, fence, ErrStaleFence)
	}
	mc.lease.Expires = now.Add(ttl)
	return *mc.lease, nil
}

// Release implements Store.
func (s *MemStore) Release(ctx context.Context, c Coll, holder string, fence uint64) error {
	if err := checkName("holder", holder); err != nil {
		return err
	}
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, false)
	if mc == nil || mc.lease == nil || mc.lease.Fence != fence {
		return nil
	}
	if mc.lease.Holder != holder {
		return fmt.Errorf("release lease of %s/%s with fence %d: held by another holder: %w", c.Tenant, c.Collection, fence, ErrStaleFence)
	}
	mc.lease = nil
	return nil
}

// Usage implements Store.
func (s *MemStore) Usage(ctx context.Context, tenant string) (Usage, error) {
	if err := s.lock(ctx); err != nil {
		return Usage{}, err
	}
	defer s.mu.Unlock()
	var u Usage
	for c, mc := range s.colls {
		if c.Tenant != tenant {
			continue
		}
		for _, d := range mc.docs {
			u.Records++
			u.Bytes += int64(len(d.snap)) + d.tailBytes()
		}
	}
	return u, nil
}

// Stats implements Store. Bytes counts the log's changes and the records'
// snapshots.
func (s *MemStore) Stats(ctx context.Context) (StoreStats, error) {
	if err := s.lock(ctx); err != nil {
		return StoreStats{}, err
	}
	defer s.mu.Unlock()
	var st StoreStats
	for _, mc := range s.colls {
		st.LogEntries += int64(len(mc.log))
		for _, e := range mc.log {
			st.Bytes += int64(len(e.Changes))
		}
		for _, d := range mc.docs {
			st.Bytes += int64(len(d.snap))
		}
	}
	return st, nil
}

// Close drops the data. It is safe to call more than once.
func (s *MemStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.colls = nil
	return nil
}
