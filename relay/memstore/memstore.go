package memstore

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// Store is a relay.Store held in memory, for tests and the dev mode. Nothing
// survives Close. One mutex guards everything, so every method is safe for
// concurrent use and each is atomic; it is simple rather than fast.
type Store struct {
	incarnation string

	mu     sync.Mutex
	closed bool
	colls  map[relay.Coll]*memColl
}

var _ relay.Store = (*Store)(nil)

// memColl is one collection's state. Byte slices are copied on the way in
// and out, so callers can never alias the store's data.
type memColl struct {
	log      []relay.LogEntry // log[i].Seq == horizon+i+1
	horizon  uint64           // entries up to it are truncated
	docs     map[string]*memDoc
	lease    *relay.Lease // nil when released or never taken
	maxFence uint64       // highest fence ever granted; never decreases
}

// memDoc is a record: its snapshot, and the log entries of its tail.
type memDoc struct {
	heads   crdt.Heads
	seq     uint64
	snap    []byte
	snapSeq uint64
	tail    []relay.LogEntry
}

func (d *memDoc) tailBytes() (n int64) {
	for _, e := range d.tail {
		n += int64(len(e.Changes))
	}
	return n
}

func (d *memDoc) record(id string) relay.Record {
	r := relay.Record{ID: id, Heads: slices.Clone(d.heads), Seq: d.seq, Snapshot: bytes.Clone(d.snap), SnapSeq: d.snapSeq, TailEntries: len(d.tail)}
	for _, e := range d.tail {
		r.Tail = append(r.Tail, e.Changes...)
	}
	return r
}

// New returns an empty in-memory store with a random incarnation.
func New() *Store {
	return &Store{
		incarnation: uuid.NewString(),
		colls:       make(map[relay.Coll]*memColl),
	}
}

// Incarnation implements relay.Store.
func (s *Store) Incarnation() string { return s.incarnation }

// lock takes the store's mutex after the checks every method starts with.
// On success the caller must unlock s.mu.
func (s *Store) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return relay.ErrStoreClosed
	}
	return nil
}

// coll returns c's state, creating it when create is set; nil otherwise.
func (s *Store) coll(c relay.Coll, create bool) *memColl {
	mc := s.colls[c]
	if mc == nil && create {
		mc = &memColl{docs: make(map[string]*memDoc)}
		s.colls[c] = mc
	}
	return mc
}

// Append implements relay.Store.
func (s *Store) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	if err := relay.CheckAppend(c, entries); err != nil {
		return 0, err
	}
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, true)
	if fence != 0 && (mc.lease == nil || mc.lease.Fence != fence || !mc.lease.Live(now)) {
		return 0, fmt.Errorf("append to %s/%s with fence %d: %w", c.Tenant, c.Collection, fence, relay.ErrStaleFence)
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
			return 0, &relay.ConflictError{Record: e.Record}
		}
		pending[e.Record] = e.Heads
	}
	for _, e := range entries {
		seq := mc.head() + 1
		le := relay.LogEntry{Seq: seq, Record: e.Record, Changes: bytes.Clone(e.Changes), Heads: slices.Clone(e.Heads)}
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

// Record implements relay.Store.
func (s *Store) Record(ctx context.Context, c relay.Coll, record string) (relay.Record, error) {
	if err := s.lock(ctx); err != nil {
		return relay.Record{}, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, false)
	if mc == nil || mc.docs[record] == nil {
		return relay.Record{}, fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, relay.ErrNotFound)
	}
	return mc.docs[record].record(record), nil
}

// Log implements relay.Store.
func (s *Store) Log(ctx context.Context, c relay.Coll, after uint64, limit int) ([]relay.LogEntry, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, false)
	if mc == nil || limit <= 0 {
		return nil, nil
	}
	if after < mc.horizon {
		return nil, &relay.TruncatedError{Horizon: mc.horizon}
	}
	if after >= mc.head() {
		return nil, nil
	}
	src := mc.log[after-mc.horizon:]
	src = src[:min(len(src), limit)]
	out := make([]relay.LogEntry, len(src))
	for i, e := range src {
		out[i] = relay.LogEntry{Seq: e.Seq, Record: e.Record, Changes: bytes.Clone(e.Changes), Heads: slices.Clone(e.Heads)}
	}
	return out, nil
}

// Head implements relay.Store.
func (s *Store) Head(ctx context.Context, c relay.Coll) (uint64, error) {
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	if mc := s.coll(c, false); mc != nil {
		return mc.head(), nil
	}
	return 0, nil
}

// Records implements relay.Store. It sorts the record IDs on every call: fine
// for tests, not for large collections.
func (s *Store) Records(ctx context.Context, c relay.Coll, after string, limit int) ([]relay.Record, error) {
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
	out := make([]relay.Record, len(ids))
	for i, id := range ids {
		out[i] = mc.docs[id].record(id)
	}
	return out, nil
}

// Compact implements relay.Store.
func (s *Store) Compact(ctx context.Context, c relay.Coll, record string, snap []byte, upTo uint64) error {
	if err := relay.CheckColl(c); err != nil {
		return err
	}
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, false)
	if mc == nil || mc.docs[record] == nil {
		return fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, relay.ErrNotFound)
	}
	d := mc.docs[record]
	if upTo > d.seq || upTo <= d.snapSeq {
		return &relay.ConflictError{Record: record}
	}
	d.snap, d.snapSeq = bytes.Clone(snap), upTo
	i := 0
	for i < len(d.tail) && d.tail[i].Seq <= upTo {
		i++
	}
	d.tail = slices.Clone(d.tail[i:])
	return nil
}

// CompactionCandidates implements relay.Store.
func (s *Store) CompactionCandidates(ctx context.Context, limit int) ([]relay.Candidate, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	var out []relay.Candidate
	for c, mc := range s.colls {
		for id, d := range mc.docs {
			if len(out) < limit && relay.NeedsCompaction(int64(len(d.snap)), d.tailBytes(), int64(len(d.tail))) {
				out = append(out, relay.Candidate{Coll: c, Record: id})
			}
		}
	}
	return out, nil
}

// Truncate implements relay.Store.
func (s *Store) Truncate(ctx context.Context, c relay.Coll, upTo uint64) (uint64, error) {
	if err := relay.CheckColl(c); err != nil {
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

// Acquire implements relay.Store.
func (s *Store) Acquire(ctx context.Context, c relay.Coll, holder string, ttl time.Duration, now time.Time) (relay.Lease, error) {
	if err := relay.CheckColl(c); err != nil {
		return relay.Lease{}, err
	}
	if err := relay.CheckLease(holder, ttl); err != nil {
		return relay.Lease{}, err
	}
	if err := s.lock(ctx); err != nil {
		return relay.Lease{}, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, true)
	if l := mc.lease; l != nil && l.Live(now) && l.Holder != holder {
		return relay.Lease{}, &relay.LeaseHeldError{Lease: *l}
	}
	mc.maxFence++
	l := relay.Lease{Holder: holder, Fence: mc.maxFence, Expires: now.Add(ttl)}
	mc.lease = &l
	return l, nil
}

// Renew implements relay.Store.
func (s *Store) Renew(ctx context.Context, c relay.Coll, holder string, fence uint64, ttl time.Duration, now time.Time) (relay.Lease, error) {
	if err := relay.CheckLease(holder, ttl); err != nil {
		return relay.Lease{}, err
	}
	if err := s.lock(ctx); err != nil {
		return relay.Lease{}, err
	}
	defer s.mu.Unlock()
	mc := s.coll(c, false)
	if mc == nil || mc.lease == nil || mc.lease.Fence != fence || !mc.lease.Live(now) {
		return relay.Lease{}, fmt.Errorf("renew lease of %s/%s with fence %d: %w", c.Tenant, c.Collection, fence, relay.ErrStaleFence)
	}
	if mc.lease.Holder != holder {
		return relay.Lease{}, fmt.Errorf("renew lease of %s/%s with fence %d: held by another holder: %w", c.Tenant, c.Collection, fence, relay.ErrStaleFence)
	}
	mc.lease.Expires = now.Add(ttl)
	return *mc.lease, nil
}

// Release implements relay.Store.
func (s *Store) Release(ctx context.Context, c relay.Coll, holder string, fence uint64) error {
	if err := relay.CheckName("holder", holder); err != nil {
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
		return fmt.Errorf("release lease of %s/%s with fence %d: held by another holder: %w", c.Tenant, c.Collection, fence, relay.ErrStaleFence)
	}
	mc.lease = nil
	return nil
}

// Usage implements relay.Store.
func (s *Store) Usage(ctx context.Context, tenant string) (relay.Usage, error) {
	if err := s.lock(ctx); err != nil {
		return relay.Usage{}, err
	}
	defer s.mu.Unlock()
	var u relay.Usage
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

// Stats implements relay.Store. Bytes counts the log's changes and the records'
// snapshots.
func (s *Store) Stats(ctx context.Context) (relay.StoreStats, error) {
	if err := s.lock(ctx); err != nil {
		return relay.StoreStats{}, err
	}
	defer s.mu.Unlock()
	var st relay.StoreStats
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
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.colls = nil
	return nil
}
