package relay

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// committer groups one collection's pushes into shared store appends (group
// commit; see push). A push is merged onto the documents as they will be
// once every queued push is written (enqueue), then waits in the queue;
// one push's handler at a time writes the queue, a group per store Append
// (flush).
type committer struct {
	c Coll

	mu       sync.Mutex // guards the fields below
	queue    []*waiter  // merged, waiting to be written
	queued   map[string]*relayDoc
	inQueue  map[string]int    // entries in the queue per record
	pins     map[string]func() // each queued document's pin in s.docs
	flushing bool
	// gen counts the times the queue was dropped after a failed append: a
	// push merged across a drop was merged onto documents that are gone.
	gen uint64
	// epoch counts the groups written. While pushes read documents with
	// no lock held (preload), wrote remembers, per record, the last group
	// that wrote it and the document written, so a push whose document
	// was read before that write reads it again (see load). active counts
	// those pushes by the epoch they began at; wrote forgets what none of
	// them began before.
	epoch  uint64
	wrote  map[string]wrote
	active map[uint64]int
	// merging counts the pushes merging now (from beginRead to endRead),
	// begun and ended those that have begun and ended, and mergeEvent is
	// closed, and replaced, when one begins or ends: a flusher waits on
	// them (gather).
	merging    int
	begun      uint64
	ended      uint64
	mergeEvent chan struct{}
	// lastGroup is how many pushes the last group written held, wroteAt
	// when it was written, and begunAt what begun was then: the devices
	// that awaited those pushes' acks may be about to push again (see
	// gather).
	lastGroup int
	wroteAt   time.Time
	begunAt   uint64
	// mark is lastGroup and wroteAt, read without mu once the committer
	// is dropped, for the next one (see Server.lastGroups).
	mark atomic.Pointer[groupMark]
	// gatherHook, if set (by tests), is called with mu held when a
	// flusher starts to wait for pushes merging.
	gatherHook func()
	// queuedHook, if set (by tests), is called with the queue's length
	// each time a push joins it, with mu held.
	queuedHook func(n int)
}

// waiter is one merged push waiting for its group to be durable.
type waiter struct {
	fence   uint64
	entries []Entry
	bytes   int // what entries weigh in a store transaction, roughly
	ack     *transport.Ack
	done    chan result
	lead    chan struct{} // this push's handler is to flush the queue
	mem     *memGrant     // the push's memory (see admitPushMemory)
}

type result struct {
	seq uint64
	err error
}

func (s *Server) committer(c Coll) *committer {
	s.mu.Lock()
	defer s.mu.Unlock()
	cm := s.committers[c]
	if cm == nil {
		cm = &committer{c: c, queued: map[string]*relayDoc{}, inQueue: map[string]int{}, pins: map[string]func(){}, wrote: map[string]wrote{}, active: map[uint64]int{}}
		if m, ok := s.lastGroups[c]; ok {
			// Every push this committer sees began after that write.
			delete(s.lastGroups, c)
			cm.lastGroup, cm.wroteAt = m.n, m.at
		}
		s.committers[c] = cm
	}
	return cm
}

// groupMark is a group written: how many pushes it held, and when.
type groupMark struct {
	n  int
	at time.Time
}

// lastWritten is the last group the committer wrote, or nil.
func (cm *committer) lastWritten() *groupMark { return cm.mark.Load() }

// merged is one record of a push, merged onto its document.
type merged struct {
	rd       *relayDoc
	unpin    func() // rd's pin in s.docs while this push uses it
	base     crdt.Heads
	queued   bool        // holds other pushes' changes, not yet durable
	touched  bool        // this push merged, or tried to merge, changes into rd
	data     []byte      // the pushed changes, concatenated
	hashes   []crdt.Hash // their hashes
	imported int         // how many of them were new
	// what rd's saved and unsaved become once written (see relayDoc)
	saved, unsaved, credit int
	measured               bool  // saved is exact, measured by this push
	mem                    int64 // and what rd's mem becomes (see docMemory)
}

// savedGrowth bounds what a change adds to a saved document, per byte of
// the change as pushed. In practice a change adds less than its own bytes
// (the saved form drops its header, hashes and actor ID, and compresses
// columns); 4 leaves room for changes whose operations fragment the
// document's columns, or compress worse there than in the change. Only a
// record within that margin of max_record needs measuring.
const savedGrowth = 4

// measureShare sets how often a record near max_record may be measured
// (saved whole, in time proportional to its history): once per
// 1/measureShare of its last measured size in changes pushed to it. The
// measure then costs each push about what its own bytes cost, whatever
// the record's size; pushes between measures that could pass the limit
// are refused (see merged.fits).
const measureShare = 64

// mayMeasure reports whether a record last measured at saved bytes, with
// credit bytes of changes pushed to it since, may be measured again.
func mayMeasure(saved, credit int) bool { return credit >= saved/measureShare }

// tooNear is the refusal of a push that could grow a record's saved
// document, last measured at saved bytes, by up to growth bytes, past
// max_record, when the relay may not measure it again yet.
func tooNear(id string, saved, growth, maxRecord int) error {
	return perr(transport.CodeTooLarge, "record %q: the push could grow its saved document past max_record %d (it saved to %d bytes when last measured; the changes since could add up to %d)", id, maxRecord, saved, growth)
}

// enqueue merges the push onto the documents as they will be once every
// queued push is written, and queues its entries. framed are the pushed
// records' changes, framed.
func (cm *committer) enqueue(ctx context.Context, s *Server, p *transport.Push, framed []*crdt.Framed) (w *waiter, err error) {
	var order []string // records in the order the push first names them
	named := map[string]bool{}
	for _, r := range p.Records {
		if !named[r.Record] {
			named[r.Record] = true
			order = append(order, r.Record)
		}
	}
	refresh := map[string]bool{} // records to read from the store again
	for reloads := 0; reloads < maxReloads; {
		w, err = cm.enqueueOnce(ctx, s, p, framed, order, refresh)
		var stale *staleRecord
		switch {
		case errors.As(err, &stale):
			// The document may only be older than the store (see
			// stale.go): never refuse before merging onto what the store
			// holds. Each record is read again once at most.
			refresh[stale.record] = true
		case errors.Is(err, errReload):
			reloads++
		default:
			return w, err
		}
	}
	return nil, errRemerge
}

// maxReloads bounds how often one merge reads its documents again because
// they changed between its read and its lock (see load): only a document
// written and then evicted from the cache in that gap makes it read again.
const maxReloads = 8

// errReload tells enqueue that a document preload found has been written
// since: read it again.
var errReload = errors.New("relay: document written since it was read")

// enqueueOnce is enqueue, with documents read once, and the records in
// refresh read from the store whether cached or queued.
func (cm *committer) enqueueOnce(ctx context.Context, s *Server, p *transport.Push, framed []*crdt.Framed, order []string, refresh map[string]bool) (w *waiter, err error) {
	// The store is read before any lock is taken: a lock held through
	// store I/O (on PostgreSQL, up to its retries' worth) would hold up
	// every other push to those records meanwhile.
	start := cm.beginRead()
	defer cm.endRead(start)
	pre, err := cm.preload(ctx, s, order, refresh)
	if err != nil {
		return nil, err
	}
	defer pre.release()
	// Records are locked, not the collection, and each record on its own
	// (no two records share a lock): merges of different records run in
	// parallel, and two pushes to one record take turns, the second
	// building on the first's queued document. The collection's lock is
	// held only to read and extend the queue.
	keys := make([]recordKey, 0, len(order))
	for _, id := range order {
		keys = append(keys, recordKey{cm.c, id})
	}
	defer s.recLocks.Lock(keys...)()
	cm.mu.Lock()
	gen := cm.gen
	cm.mu.Unlock()
	recs := map[string]*merged{}
	defer func() {
		if err != nil {
			cm.undo(s, recs, order)
		}
		for _, m := range recs {
			m.unpin()
		}
	}()
	for i, r := range p.Records {
		m := recs[r.Record]
		if m == nil {
			rd, queued, unpin, err := cm.load(s, r.Record, pre[r.Record], start, refresh[r.Record])
			if err != nil {
				return nil, err
			}
			m = &merged{rd: rd, unpin: unpin, base: rd.doc.Heads(), queued: queued}
			recs[r.Record] = m
		}
		if err := m.fits(s, r, framed[i].Changes()); err != nil {
			return nil, err
		}
		m.touched = true
		if err := m.merge(r, framed[i]); err != nil {
			if errors.Is(err, crdt.ErrMissingDeps) && !refresh[r.Record] {
				return nil, &staleRecord{r.Record}
			}
			return nil, cm.refused(s, r.Record, err)
		}
	}
	w = &waiter{fence: p.Fence, ack: &transport.Ack{Collection: cm.c.Collection}, done: make(chan result, 1), lead: make(chan struct{}, 1), mem: pushGrant(ctx)}
	for _, id := range order {
		m := recs[id]
		heads := m.rd.doc.Heads()
		w.ack.Records = append(w.ack.Records, transport.RecordAck{Record: id, Heads: heads.Slices()})
		if heads.Equal(m.base) {
			continue // everything was already held (or queued)
		}
		e, err := m.entry(s, id, heads)
		if err != nil {
			return nil, err
		}
		w.entries = append(w.entries, e)
		w.bytes += entryBytes(e)
	}
	if err := cm.join(s, w, recs, gen); err != nil {
		return nil, err
	}
	return w, nil
}

// undo leaves no trace of a refused push: a document only this push
// touched is forgotten (the next push reloads it from the store), and a
// queued one, which holds other pushes' changes, goes back to what it
// was.
func (cm *committer) undo(s *Server, recs map[string]*merged, order []string) {
	for _, id := range order {
		m := recs[id]
		if m == nil || !m.touched {
			continue // not loaded, or nothing merged: the push was refused before
		}
		if !m.queued {
			m.rd.dropped.Store(true)
			s.docs.Remove(recordKey{cm.c, id})
		} else {
			deferred := m.rd.doc.Deferred()
			if err := m.rd.doc.Reset(m.base); err != nil {
				s.log.Error("undoing a refused push on a queued document", "tenant", cm.c.Tenant, "collection", cm.c.Collection, "record", id, "err", err)
			}
			if deferred && !m.rd.doc.Deferred() {
				// Reset built it: it now takes what a built document
				// takes (see docMemory).
				cm.mu.Lock()
				m.rd.mem = docMemory(m.rd.doc, m.rd.saved+m.rd.unsaved)
				m.rd.grant.set(m.rd.mem)
				cm.mu.Unlock()
			}
		}
	}
}

// fits refuses, before they are merged, changes r that could grow the
// record's saved document past max_record while the relay may not
// measure it (see entry, which decides on the merged document). Refused
// here, the document stays as it was, cached; refused after the merge, it
// would be dropped and read again from the store by the next push. A
// document as loaded, with a tail never measured, is measured here first,
// as it is (the load pays for it).
func (m *merged) fits(s *Server, r transport.RecordChanges, infos []crdt.ChangeInfo) error {
	rd, maxRecord := m.rd, s.maxRecord()
	n := len(m.data) + len(r.Data) // this push's changes to the record, if all new
	if rd.saved+savedGrowth*(rd.unsaved+n) <= maxRecord {
		return nil
	}
	if rd.loaded && rd.unsaved > 0 && len(m.data) == 0 {
		saved, err := rd.doc.SavedSize()
		if err != nil {
			return err
		}
		s.metrics.recordSaves.Inc()
		rd.saved, rd.unsaved, rd.credit, rd.loaded = saved, 0, 0, false
		if rd.saved+savedGrowth*n <= maxRecord {
			return nil
		}
	}
	if mayMeasure(rd.saved, rd.credit+n) {
		return nil // entry measures it
	}
	for _, in := range infos {
		if rd.doc.Has(in.Hash) {
			// What the push adds is known once it is merged: a device
			// pushing again what the relay holds is acknowledged.
			return nil
		}
	}
	rd.credit += len(r.Data)
	return tooNear(r.Record, rd.saved, savedGrowth*(rd.unsaved+n), maxRecord)
}

// merge imports one pushed record's changes, framed as f.
func (m *merged) merge(r transport.RecordChanges, f *crdt.Framed) error {
	// Import checks each change in time proportional to the change: it
	// must be in Automerge's canonical encoding, and refer only to
	// operations the document holds, so that the record still saves and
	// loads once it is in. Framed once, when the push arrived.
	n, err := m.rd.doc.ImportFramed(f)
	if errors.Is(err, crdt.ErrOpLimit) {
		return perr(transport.CodeTooLarge, "record %q: %v (max_record_ops)", r.Record, err)
	}
	if err != nil {
		return err
	}
	m.imported += n
	m.data = append(m.data, r.Data...)
	for _, in := range f.Changes() {
		m.hashes = append(m.hashes, in.Hash)
	}
	return nil
}

// entry returns the log entry of a record the push changed, now at heads,
// and sets what the record's saved size will be known as, refusing what
// could not be sent to a device: a log entry past max_record, or a record
// whose saved document would pass it.
func (m *merged) entry(s *Server, id string, heads crdt.Heads) (Entry, error) {
	delta, hashes := m.data, m.hashes
	if m.imported != len(m.hashes) {
		// Some pushed changes were held already: store only the new.
		// This and Save below need the whole document: a deferred one is
		// built first, so that changes it cannot build from refuse the
		// push rather than panic (see crdt.NewDeferred).
		if err := m.rd.doc.Build(); err != nil {
			return Entry{}, err
		}
		var err error
		if delta, err = m.rd.doc.ChangesSince(m.base); err != nil {
			return Entry{}, err
		}
		in, err := crdt.ParseChanges(delta)
		if err != nil {
			return Entry{}, err
		}
		hashes = make([]crdt.Hash, len(in))
		for i, c := range in {
			hashes[i] = c.Hash
		}
	}
	if len(delta) > s.maxRecord() {
		return Entry{}, perr(transport.CodeTooLarge, "record %q: %d bytes of new changes in one push, over max_record %d", id, len(delta), s.maxRecord())
	}
	// What max_record bounds is the document saved whole, as a fresh
	// device gets it after compaction. The bytes stored or pushed do not
	// bound it (a compressed change can weigh less than what it adds to
	// the saved document), and saving costs time in the document's whole
	// history, so the relay keeps the document's saved size as last
	// measured, and bounds what changes merged since add by savedGrowth
	// times their bytes. Only when that bound could pass the limit is the
	// document measured, and the limit checked on its exact size; and at
	// most once per 1/measureShare of its size pushed (mayMeasure), so
	// that a record near the limit does not cost a Save per push: pushes
	// in between that could pass it are refused (fits, or here for
	// pushes of changes partly held).
	m.saved, m.unsaved, m.credit = m.rd.saved, m.rd.unsaved+len(delta), m.rd.credit+len(delta)
	if m.saved+savedGrowth*m.unsaved > s.maxRecord() {
		if !mayMeasure(m.saved, m.credit) {
			return Entry{}, tooNear(id, m.saved, savedGrowth*m.unsaved, s.maxRecord())
		}
		saved, err := m.rd.doc.SavedSize()
		if err != nil {
			return Entry{}, err
		}
		s.metrics.recordSaves.Inc()
		if saved > s.maxRecord() {
			return Entry{}, perr(transport.CodeTooLarge, "record %q: the push would grow its saved document to %d bytes, over max_record %d", id, saved, s.maxRecord())
		}
		m.saved, m.unsaved, m.credit, m.measured = saved, 0, 0, true
	}
	m.mem = docMemory(m.rd.doc, m.saved+m.unsaved)
	return Entry{Record: id, Base: m.base, Changes: delta, Hashes: hashes, Heads: heads}, nil
}

// join queues w, whose records were merged as recs onto the queue of
// generation gen, and makes its handler the flusher if none is flushing.
func (cm *committer) join(s *Server, w *waiter, recs map[string]*merged, gen uint64) error {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	if cm.gen != gen {
		// A failed append dropped the queue this push was merged onto.
		return errRemerge
	}
	for _, e := range w.entries {
		m := recs[e.Record]
		m.rd.saved, m.rd.unsaved, m.rd.credit, m.rd.mem = m.saved, m.unsaved, m.credit, m.mem
		m.rd.loaded = m.rd.loaded && !m.measured
		w.mem.moveTo(m.rd.grant, m.mem, int64(w.bytes))
		if cm.queued[e.Record] != m.rd {
			// The queue pins what it holds; this push's own pin keeps the
			// document findable until then.
			cm.pins[e.Record], _ = s.docs.Pin(recordKey{cm.c, e.Record}, m.rd)
		}
		cm.queued[e.Record] = m.rd
		cm.inQueue[e.Record]++
	}
	// Even a push of changes already held waits for the queue: "held" may
	// mean merged but not yet durable.
	cm.queue = append(cm.queue, w)
	if cm.queuedHook != nil {
		cm.queuedHook(len(cm.queue))
	}
	if !cm.flushing {
		cm.flushing = true
		w.lead <- struct{}{}
	} else if len(w.entries) > 0 {
		// Queued behind a group being made durable: subscribers that take
		// changes early get this push's now, not once the groups before
		// it are durable (a device editing live would otherwise wait for
		// the last edit's fsync on every edit). Its group fans it out
		// again when written; the copy is dropped as held.
		s.hub.writing(cm.c, w.entries)
	}
	return nil
}

// preloaded is a record's document as found before its lock was taken:
// the queued or cached one, pinned, or one read from the store and not
// cached yet.
type preloaded struct {
	rd    *relayDoc
	unpin func() // the cache's pin; nil for a document read from the store
	used  bool   // load handed rd on to the push
	// For a cached rd that may be older than the store (see stale.go):
	// checked says heads are the store's heads of the record, read after
	// the stale mark seen.
	checked bool
	heads   crdt.Heads
	seen    uint64
	// stored is the record as stored (nil if the store has none), read
	// for a queued rd that is to take in what the store holds.
	stored *Record
}

type preloads map[string]*preloaded

// release drops what preload took and load did not hand on.
func (pl preloads) release() {
	for _, p := range pl {
		switch {
		case p.unpin != nil:
			p.unpin()
		case !p.used:
			p.rd.free()
		}
	}
}

// preload finds the documents of records ids: it pins the queued and
// cached ones, and reads the others from the store. It holds no record
// lock, so a slow store holds up only this push. For a cached document
// that another relay process may have written to since, or one of a
// record in refresh, it reads the record's stored heads too, and for a
// queued one in refresh the record as stored (see stale.go).
func (cm *committer) preload(ctx context.Context, s *Server, ids []string, refresh map[string]bool) (pl preloads, err error) {
	pl = preloads{}
	defer func() {
		if err != nil {
			pl.release()
		}
	}()
	for _, id := range ids {
		key := recordKey{cm.c, id}
		cm.mu.Lock()
		rd, queued := cm.queued[id]
		var unpin func()
		if queued {
			// The queue's pin holds it: written cannot drop that pin
			// while cm.mu is held.
			unpin, queued = s.docs.Pin(key, rd)
		}
		cm.mu.Unlock()
		if queued {
			p := &preloaded{rd: rd, unpin: unpin}
			pl[id] = p
			if refresh[id] {
				if err := cm.readStored(ctx, s, id, p); err != nil {
					return nil, err
				}
			}
			continue
		}
		if rd, unpin, ok := s.docs.Acquire(key); ok {
			p := &preloaded{rd: rd, unpin: unpin}
			pl[id] = p
			if refresh[id] || s.marks.stale(cm.c, rd.seen.Load()) {
				if err := cm.readHeads(ctx, s, id, p); err != nil {
					return nil, err
				}
			}
			continue
		}
		rd, err := cm.read(ctx, s, id)
		if err != nil {
			return nil, err
		}
		pl[id] = &preloaded{rd: rd}
	}
	return pl, nil
}

// read loads a record's document from the store: a new, empty one if the
// store has no such record.
func (cm *committer) read(ctx context.Context, s *Server, id string) (*relayDoc, error) {
	seen := s.marks.now()
	rec, err := s.store.Record(ctx, cm.c, id)
	if errors.Is(err, ErrNotFound) {
		// Deferred: a record's first pushes are checked in Go alone
		// (crdt.NewDeferred), and its Automerge document is built only
		// if something needs the whole document.
		d := crdt.NewDeferred()
		d.SetMaxOps(s.limits.MaxRecordOps)
		mem := docMemory(d, 0)
		rd := &relayDoc{doc: d, mem: mem, grant: s.mem.charge(mem)}
		rd.seen.Store(seen)
		return rd, nil
	}
	if err != nil {
		return nil, err
	}
	// Loaded, indexed and kept as a deferred document (loadDeferred): the
	// pushes merged into it after are checked without Automerge.
	d, g, err := s.loadCounted(ctx, cm.c, rec, true, true, loadDeferred)
	if err != nil {
		return nil, err
	}
	// A snapshot is a saved document: its size is exact as of SnapSeq.
	d.SetMaxOps(s.limits.MaxRecordOps)
	rd := &relayDoc{doc: d, saved: len(rec.Snapshot), unsaved: len(rec.Tail), loaded: true, mem: g.size(), grant: g}
	rd.seen.Store(seen)
	return rd, nil
}

// loadDeferred loads a stored record as a deferred document
// (crdt.LoadDeferred: a snapshot is loaded to index its history, then
// freed; changes alone are checked in Go). loadStored says why a record
// does not load, and loads one whose history Go cannot index.
func loadDeferred(c Coll, rec Record) (*crdt.Doc, error) {
	d, err := crdt.LoadDeferred(rec.Data())
	if err == nil && d.Heads().Equal(rec.Heads) {
		return d, nil
	}
	if err == nil {
		d.Free()
	}
	return loadStored(c, rec)
}

// load returns a record's document as it will be once the queue is
// written: queued (queued=true), cached, or p, what preload found for a
// read that began at epoch start. The caller holds the record's lock, and
// the document is pinned in s.docs until unpin: the cache frees a document
// that leaves it, once no pin holds it. load does no I/O: where p may be
// older than the store, it returns errReload, to read again with no lock
// held. A cached document that another relay process may have written to
// since (or any, with refresh) is used only if preload found the store's
// heads equal to its own; a queued one takes in what preload read of the
// record as stored, if anything (see stale.go).
func (cm *committer) load(s *Server, id string, p *preloaded, start uint64, refresh bool) (rd *relayDoc, queued bool, unpin func(), err error) {
	key := recordKey{cm.c, id}
	cm.mu.Lock()
	rd, queued = cm.queued[id]
	if queued {
		// The queue's pin holds it: written cannot drop that pin while
		// cm.mu is held.
		unpin, _ = s.docs.Pin(key, rd)
	}
	w, since := cm.wrote[id]
	cm.mu.Unlock()
	if queued {
		if p.stored != nil {
			if err := cm.catchUpQueued(id, rd, *p.stored); err != nil {
				unpin()
				return nil, false, nil, err
			}
		}
		return rd, true, unpin, nil
	}
	if rd, unpin, ok := s.docs.Acquire(key); ok {
		// The newest this relay has: a push may have written the record
		// since preload. Another relay process may have written it too.
		if refresh || s.marks.stale(cm.c, rd.seen.Load()) {
			if err := cm.checkCached(s, id, rd, p); err != nil {
				unpin()
				return nil, false, nil, err
			}
		}
		return rd, false, unpin, nil
	}
	// Neither queued nor cached now: p is what the store holds unless a
	// group wrote another document of the record since it was read, or p
	// was dropped since (it holds a refused push's changes).
	if p.rd.dropped.Load() || (since && w.epoch > start && w.rd != p.rd) {
		return nil, false, nil, errReload
	}
	p.used = true
	return p.rd, false, s.docs.PutAcquire(key, p.rd, p.rd.cost()), nil
}

// wrote is the last write of a record, while pushes read documents.
type wrote struct {
	epoch uint64
	rd    *relayDoc
}

// beginRead notes that a push starts reading documents, and returns the
// epoch it began at.
func (cm *committer) beginRead() uint64 {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	cm.active[cm.epoch]++
	cm.merging++
	cm.begun++
	cm.mergeEvented()
	return cm.epoch
}

// endRead notes that a push that began reading at start no longer needs
// to know what was written since, and forgets the writes that no push
// reading now began before.
func (cm *committer) endRead(start uint64) {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	cm.merging--
	cm.ended++
	cm.mergeEvented()
	if cm.active[start]--; cm.active[start] > 0 {
		return
	}
	delete(cm.active, start)
	oldest := cm.epoch
	for e := range cm.active {
		oldest = min(oldest, e)
	}
	if oldest < start {
		return // an older read still needs them
	}
	for id, w := range cm.wrote {
		if w.epoch <= oldest {
			delete(cm.wrote, id)
		}
	}
}

// flush writes queued groups until own's is durable, then hands the
// flushing role to the next queued push's handler, so no client waits on
// other clients' writes for long. One handler flushes at a time.
func (cm *committer) flush(ctx context.Context, s *Server, own *waiter) {
	cm.mu.Lock()
	most := 0 // pushes the next group may hold; 0: as many as the caps allow
	for len(cm.queue) > 0 && len(own.done) == 0 {
		cm.gather(s)
		group, entries, docs := cm.nextGroup(s, most)
		cm.mu.Unlock()
		var seq, early uint64
		var err error
		if len(entries) > 0 {
			// Subscribers that take changes early get the group's checked
			// changes while the store makes them durable; cursors move
			// only with the durable entries (written).
			early = s.hub.writing(cm.c, entries)
			seq, err = s.store.Append(context.WithoutCancel(ctx), cm.c, group[0].fence, s.now(), entries)
		} else {
			seq, err = s.store.Head(context.WithoutCancel(ctx), cm.c)
		}
		s.hub.settled(cm.c, early)
		cm.mu.Lock()
		if errors.Is(err, ErrAppendTooLarge) && len(group) > 1 {
			// The caps are a guess at the store's transaction limit: write
			// the group in halves. Nothing was written, and the queue
			// behind it still builds on it in the same order.
			cm.queue = append(group[:len(group):len(group)], cm.queue...)
			most = len(group) / 2
			continue
		}
		most = 0
		if err != nil {
			cm.failed(s, group, err)
		} else {
			cm.written(s, group, entries, docs, seq)
		}
	}
	if len(cm.queue) > 0 {
		cm.queue[0].lead <- struct{}{}
	} else {
		cm.flushing = false
	}
	cm.mu.Unlock()
}

// mergeEvented wakes a flusher waiting for merges (gather). cm.mu is
// held.
func (cm *committer) mergeEvented() {
	if cm.mergeEvent != nil {
		close(cm.mergeEvent)
		cm.mergeEvent = nil
	}
}

// gather waits, before a group is taken from the queue, for the pushes
// merging onto the queue now to join it, up to s.groupWait. Under load
// the group then takes them in, rather than leave them to wait for its
// write and then for one of their own: fewer, larger groups, each with
// one fsync and one update of the collection's head and usage. They
// would have waited longer behind the group than the group waits for
// them: reading the records the relay does not hold, the check and the
// merge. With no other push merging, as for a lone device, it does
// not wait at all. It waits for as many merges to end as were running
// when it began, whichever they are, so that pushes arriving meanwhile do
// not keep it waiting.
//
// Within s.groupWait of the last group's write, or of the last ack sent
// since (acked), it first waits for as many pushes to begin as that group
// held, if fewer have begun since, up to s.groupWait from the later of
// its start and the last ack sent: devices that await each ack before pushing
// again, as many do, push again as soon as their acks arrive, and
// otherwise the group taken just before they do would leave them to wait
// for its write and take a group and an fsync of their own; under a
// steady load, the pushes then settle into alternate half groups. A lone
// device, whose own push is the one that began since, does not wait.
// cm.mu is held, and released while waiting.
func (cm *committer) gather(s *Server) {
	if s.groupWait <= 0 {
		return
	}
	returning := cm.returning(s)
	if cm.merging == 0 && !returning {
		return
	}
	if cm.gatherHook != nil {
		cm.gatherHook()
	}
	deadline := time.Now().Add(s.groupWait)
	t := time.NewTimer(s.groupWait)
	defer t.Stop()
	target := cm.ended + uint64(cm.merging)
	for returning || cm.ended < target {
		if cm.mergeEvent == nil {
			cm.mergeEvent = make(chan struct{})
		}
		ch := cm.mergeEvent
		cm.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			cm.mu.Lock()
			return
		}
		cm.mu.Lock()
		if d := cm.wroteAt.Add(s.groupWait); returning && d.After(deadline) {
			// An ack went out since: its device has s.groupWait to come
			// back from then.
			deadline = d
			t.Reset(time.Until(d))
		}
		if returning && !cm.returning(s) {
			// They have begun: the group waits for their merges too.
			returning, target = false, cm.ended+uint64(cm.merging)
		}
	}
}

// returning reports whether, within s.groupWait of the last group's write
// or of the last ack sent since (wroteAt), fewer pushes have begun since
// than that group held (see gather). cm.mu is held.
func (cm *committer) returning(s *Server) bool {
	return cm.lastGroup > 0 && cm.begun-cm.begunAt < uint64(cm.lastGroup) && time.Since(cm.wroteAt) < s.groupWait
}

// acked notes that the ack of a push the committer wrote went out at now:
// its device may push again from then on, so a flusher waiting for the
// last group's devices (gather) gives them s.groupWait from now, not from
// the group's write. Under load a group's acks take a while to go out,
// and a wait timed from the write alone ran out before the last devices
// could come back: their pushes then made a group, and an fsync, of
// their own.
func (cm *committer) acked(now time.Time) {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	if cm.lastGroup == 0 || !now.After(cm.wroteAt) {
		return
	}
	cm.wroteAt = now
	cm.mark.Store(&groupMark{cm.lastGroup, cm.wroteAt})
	cm.mergeEvented()
}

// groupWait bounds how long a flusher waits for pushes merging, and for
// devices pushing again after a group's write (gather): a merge takes
// tens of microseconds, or a few milliseconds for a large record that
// must be saved whole to check max_record.
const groupWait = time.Millisecond

// Caps of one group, so that pushes which each fit a store's append are
// not merged into one that does not, and one group's write does not keep
// the pushes queued behind it waiting long: a push can carry up to
// max_frame (4 MiB by default). The Badger store writes a larger append
// in several transactions, published as one, but refuses one with more
// records than a transaction holds the metas of (about 10,000); see
// badgerstore.Append. A push larger than the caps goes alone.
const (
	groupBytes   = 4 << 20
	groupEntries = 4096
)

// entryBytes is what e adds to a store transaction, roughly: its changes,
// heads, base and record name, and a little for its keys.
func entryBytes(e Entry) int {
	return len(e.Changes) + len(e.Record) + 32*(len(e.Heads)+len(e.Base)+len(e.Hashes)) + 64
}

// nextGroup takes the pushes at the head of the queue that share one fence
// (the store checks one per Append), within the caps (s.groupBytes,
// s.groupEntries) and at most most of them unless most is 0, with their
// entries and the documents these leave. The first push is taken whatever
// its size. cm.mu is held.
func (cm *committer) nextGroup(s *Server, most int) (group []*waiter, entries []Entry, docs map[string]*relayDoc) {
	n := 1
	bytes, count := cm.queue[0].bytes, len(cm.queue[0].entries)
	for ; n < len(cm.queue) && (most == 0 || n < most); n++ {
		w := cm.queue[n]
		if w.fence != cm.queue[0].fence || bytes+w.bytes > s.groupBytes || count+len(w.entries) > s.groupEntries {
			break
		}
		bytes += w.bytes
		count += len(w.entries)
	}
	group = cm.queue[:n]
	cm.queue = cm.queue[n:]
	docs = map[string]*relayDoc{}
	for _, w := range group {
		entries = append(entries, w.entries...)
		for _, e := range w.entries {
			docs[e.Record] = cm.queued[e.Record]
		}
	}
	return group, entries, docs
}

// failed answers a group the store refused. Only its pushes fail (or, for
// ErrConflict, merge again). The pushes queued behind it were merged onto
// its documents, which were never written: every document goes back to
// what the store holds, and they merge again onto it. cm.mu is held.
func (cm *committer) failed(s *Server, group []*waiter, err error) {
	behind := cm.queue
	cm.queue = nil
	for id, rd := range cm.queued {
		rd.dropped.Store(true)
		s.docs.Remove(recordKey{cm.c, id})
	}
	for _, unpin := range cm.pins {
		unpin()
	}
	clear(cm.pins)
	clear(cm.queued)
	clear(cm.inQueue)
	cm.gen++
	for _, w := range group {
		w.done <- result{err: err}
	}
	for _, w := range behind {
		w.done <- result{err: errRemerge}
	}
}

// written answers a group whose entries are durable, ending at seq: its
// documents are cached, and subscribers get the entries. cm.mu is held.
func (cm *committer) written(s *Server, group []*waiter, entries []Entry, docs map[string]*relayDoc, seq uint64) {
	// Each push's seq is its last entry's: the group's entries took
	// consecutive numbers ending at seq.
	last := seq
	for i := len(group) - 1; i >= 0; i-- {
		group[i].done <- result{seq: last}
		last -= uint64(len(group[i].entries))
	}
	cm.epoch++
	cm.lastGroup, cm.wroteAt, cm.begunAt = len(group), time.Now(), cm.begun
	cm.mark.Store(&groupMark{cm.lastGroup, cm.wroteAt})
	for id, d := range docs {
		s.docs.PutSized(recordKey{cm.c, id}, d, d.cost())
		if len(cm.active) > 0 {
			cm.wrote[id] = wrote{cm.epoch, d}
		}
	}
	for _, e := range entries {
		// A document stays queued while a later push in the queue has
		// changes in it that are not written yet.
		if cm.inQueue[e.Record]--; cm.inQueue[e.Record] == 0 {
			delete(cm.inQueue, e.Record)
			delete(cm.queued, e.Record)
			cm.pins[e.Record]()
			delete(cm.pins, e.Record)
		}
	}
	if len(entries) == 0 {
		return
	}
	s.metrics.changes.Add(float64(countHashes(entries)))
	s.metrics.groups.Inc()
	// Subscribers get the entries from memory, now that they are durable:
	// no read of the store on the live path.
	logged := make([]LogEntry, len(entries))
	for i, e := range entries {
		logged[i] = LogEntry{Seq: seq - uint64(len(entries)-1-i), Record: e.Record, Changes: e.Changes, Heads: e.Heads}
	}
	s.hub.publish(cm.c, logged)
	s.compactor.appended(cm.c)
}

// earlyEntries are a group's entries as log entries without sequence
// numbers, for early live messages.
func earlyEntries(es []Entry) []LogEntry {
	out := make([]LogEntry, len(es))
	for i, e := range es {
		out[i] = LogEntry{Record: e.Record, Changes: e.Changes, Heads: e.Heads}
	}
	return out
}

func countHashes(es []Entry) int {
	n := 0
	for _, e := range es {
		n += len(e.Hashes)
	}
	return n
}
