package relay

import (
	"context"
	"errors"

	"github.com/ferrysync/ferry/crdt"
)

// readDocument is Backend.ReadDocument.
//
// A document in the cache and not queued is the record as stored: pushes
// put it there once durable, and take out one holding changes that will
// never be written. Only another relay process on a shared store writes
// a record behind it; then either that process's event marked the
// collection (staleMarks), or the heads the caller knows the record has
// reached (from the log) are not all in it, and the record's stored heads
// are read to decide. So a cached document is read with no store I/O. A
// record not cached is read from the store and loaded into the cache, so
// that the next read finds it there, unless the record is queued or this
// relay wrote it since the read began.
func (s *Server) readDocument(ctx context.Context, c Coll, record string, known crdt.Heads, read func(*crdt.Doc, crdt.Heads) error) error {
	key := recordKey{c, record}
	done, check, err := s.readCached(key, known, nil, read)
	if done {
		return err
	}
	if check {
		st := &storedHeads{seen: s.marks.now()}
		st.heads, err = s.recordHeads(ctx, c, record)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		if done, _, err := s.readCached(key, known, st, read); done {
			return err
		}
	}
	return s.readLoaded(ctx, key, read)
}

// storedHeads are a record's heads as read from the store, after the
// stale mark seen.
type storedHeads struct {
	heads crdt.Heads
	seen  uint64
}

// readCached calls read with the record's cached document, under the
// record's lock (no push merges into it or queues it meanwhile), if the
// document is the record as stored: not queued (merged with changes not
// yet durable), and, unless st says the store's heads are all in it, not
// marked stale and holding every head in known. done is false if read
// was not called; check is then true if reading the stored heads (st)
// would decide. A cached document that st shows behind the store leaves
// the cache.
func (s *Server) readCached(key recordKey, known crdt.Heads, st *storedHeads, read func(*crdt.Doc, crdt.Heads) error) (done, check bool, err error) {
	defer s.recLocks.Lock(key)()
	if s.queuedDoc(key) {
		return false, false, nil
	}
	rd, unpin, ok := s.docs.Acquire(key)
	if !ok {
		return false, false, nil
	}
	defer unpin()
	if rd.dropped.Load() {
		return false, false, nil
	}
	switch {
	case st != nil:
		if !holdsAll(rd.doc, st.heads) {
			s.dropStale(key, rd)
			return false, false, nil
		}
		if st.seen > rd.seen.Load() {
			rd.seen.Store(st.seen)
		}
	case s.marks.stale(key.c, rd.seen.Load()) || !holdsAll(rd.doc, known):
		return false, true, nil
	}
	if !s.built(key, rd) {
		return false, false, nil
	}
	return true, false, read(rd.doc, rd.doc.Heads())
}

// readLoaded reads the record from the store, loads it and calls read
// with it; the document joins the cache (see readDocument), or else is
// freed once read returns.
func (s *Server) readLoaded(ctx context.Context, key recordKey, read func(*crdt.Doc, crdt.Heads) error) error {
	seen, mark := s.marks.now(), s.hub.writeMark(key)
	rec, err := s.store.Record(ctx, key.c, key.record)
	if err != nil {
		return err
	}
	d, g, err := s.loadCounted(ctx, key.c, rec, true, true, loadStored)
	if err != nil {
		return err
	}
	// As a push loads it (committer.read): pushes may merge into it.
	d.SetMaxOps(s.limits.MaxRecordOps)
	rd := &relayDoc{doc: d, saved: len(rec.Snapshot), unsaved: len(rec.Tail), loaded: true, mem: g.size(), grant: g}
	rd.seen.Store(seen)
	defer s.recLocks.Lock(key)()
	if !s.queuedDoc(key) {
		if cached, unpin, ok := s.docs.Acquire(key); ok {
			defer unpin()
			current := !cached.dropped.Load() && holdsAll(cached.doc, rec.Heads)
			if current && !cached.doc.Deferred() {
				// Loaded meanwhile, by a push or another read.
				rd.free()
				return read(cached.doc, cached.doc.Heads())
			}
			if current {
				// Deferred, and not built for want of room (see built):
				// it stays cached for pushes, and this call reads its
				// own copy, loaded within the budget.
				defer rd.free()
				return read(d, rec.Heads)
			}
			if !cached.dropped.Load() {
				s.dropStale(key, cached)
			}
		}
		if s.hub.writeMark(key) == mark {
			// Nothing this relay wrote to the record since the read: the
			// document is the record as stored.
			unpin := s.docs.PutAcquire(key, rd, rd.cost())
			defer unpin()
			return read(d, rec.Heads)
		}
	}
	// Queued, or written since the read: a copy for this call alone.
	defer rd.free()
	return read(d, rec.Heads)
}

// built builds a cached deferred document for a reader (see
// crdt.NewDeferred), within the memory budget. A deferred document counts
// for its ledger alone (see docMemory): what building it adds is reserved
// first, without waiting, since the record's lock is held and pushes to
// the record would wait on it; the document then stays cached built, and
// counts for what it takes. With no room, false: the reader reads the
// record from the store instead (readLoaded), waiting for room there,
// and the document stays deferred for pushes. One that does not build
// leaves the cache, and the record is read from the store too, which says
// what it holds. The record's lock is held.
func (s *Server) built(key recordKey, rd *relayDoc) bool {
	if !rd.doc.Deferred() {
		return true
	}
	var grow int64
	if c, err := rd.doc.Cost(); err == nil {
		grow = max(c.Bytes-rd.mem, 0)
	}
	g, ok := s.mem.tryAcquire(grow)
	if !ok {
		return false
	}
	defer g.release()
	if err := rd.doc.Build(); err != nil {
		s.log.Error("a cached document does not build", "tenant", key.c.Tenant, "collection", key.c.Collection, "record", key.record, "err", err)
		s.dropStale(key, rd)
		return false
	}
	// The reservation becomes the document's, and the cache counts it
	// at its new size (which may evict others).
	rd.mem = docMemory(rd.doc, rd.saved+rd.unsaved)
	g.moveTo(rd.grant, rd.mem, 0)
	s.docs.PutSized(key, rd, rd.cost())
	return true
}

// dropStale takes out of the cache a document older than the store.
// The record's lock is held.
func (s *Server) dropStale(key recordKey, rd *relayDoc) {
	rd.dropped.Store(true)
	s.docs.Remove(key)
}

// recordHeads reads a record's stored heads: alone, if the store can.
func (s *Server) recordHeads(ctx context.Context, c Coll, record string) (crdt.Heads, error) {
	if rh, ok := s.store.(StoreRecordHeads); ok {
		return rh.RecordHeads(ctx, c, record)
	}
	rec, err := s.store.Record(ctx, c, record)
	return rec.Heads, err
}

// holdsAll reports whether d holds every change in heads.
func holdsAll(d *crdt.Doc, heads crdt.Heads) bool {
	for _, h := range heads {
		if !d.Has(h) {
			return false
		}
	}
	return true
}
