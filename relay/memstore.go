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
	log      []LogEntry // log[i].Seq == i+1
	docs     map[string]*memDoc
	lease    *Lease // nil when released or never taken
	maxFence uint64 // highest fence ever granted; never decreases
	bytes    int64
}

type memDoc struct {
	doc   []byte
	heads crdt.Heads
	seq   uint64
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
		seq := uint64(len(mc.log)) + 1
		heads := slices.Clone(e.Heads)
		mc.log = append(mc.log, LogEntry{Seq: seq, Record: e.Record, Changes: bytes.Clone(e.Changes), Heads: heads})
		if old := mc.docs[e.Record]; old != nil {
			mc.bytes -= int64(len(old.doc))
		}
		mc.docs[e.Record] = &memDoc{doc: bytes.Clone(e.Doc), heads: heads, seq: seq}
		mc.bytes += int64(len(e.Changes) + len(e.Doc))
	}
	return uint64(len(mc.log)), nil
}

// Document implements Store.
func (s *MemStore) Document(ctx context.Context, c Coll, record string) ([]byte, crdt.Heads, error) {
	if err := s.lock(ctx); err != nil {
		return nil, nil, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, false)
	if mc == nil || mc.docs[record] == nil {
		return nil, nil, fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, ErrNotFound)
	}
	d := mc.docs[record]
	return bytes.Clone(d.doc), slices.Clone(d.heads), nil
}

// Log implements Store.
func (s *MemStore) Log(ctx context.Context, c Coll, after uint64, limit int) ([]LogEntry, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, false)
	if mc == nil || limit <= 0 || after >= uint64(len(mc.log)) {
		return nil, nil
	}
	src := mc.log[after:]
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
		return uint64(len(mc.log)), nil
	}
	return 0, nil
}

// Snapshots implements Store. It sorts the record IDs on every call: fine
// for tests, not for large collections.
func (s *MemStore) Snapshots(ctx context.Context, c Coll, after string, limit int) ([]Snapshot, error) {
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
	out := make([]Snapshot, len(ids))
	for i, id := range ids {
		d := mc.docs[id]
		out[i] = Snapshot{Record: id, Doc: bytes.Clone(d.doc), Heads: slices.Clone(d.heads), Seq: d.seq}
	}
	return out, nil
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

// Stats implements Store. Bytes counts changes and current documents.
func (s *MemStore) Stats(ctx context.Context) (StoreStats, error) {
	if err := s.lock(ctx); err != nil {
		return StoreStats{}, err
	}
	defer s.mu.Unlock()
	var st StoreStats
	for _, mc := range s.colls {
		st.LogEntries += int64(len(mc.log))
		st.Bytes += mc.bytes
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
