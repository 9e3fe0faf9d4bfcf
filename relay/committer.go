package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"

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
	// queuedHook, if set (by tests), is called with the queue's length
	// each time a push joins it, with mu held.
	queuedHook func(n int)
}

// waiter is one merged push waiting for its group to be durable.
type waiter struct {
	fence   uint64
	entries []Entry
	ack     *transport.Ack
	done    chan result
	lead    chan struct{} // this push's handler is to flush the queue
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
		cm = &committer{c: c, queued: map[string]*relayDoc{}, inQueue: map[string]int{}, pins: map[string]func(){}}
		s.committers[c] = cm
	}
	return cm
}

// merged is one record of a push, merged onto its document.
type merged struct {
	rd       *relayDoc
	unpin    func() // rd's pin in s.docs while this push uses it
	base     crdt.Heads
	queued   bool        // holds other pushes' changes, not yet durable
	data     []byte      // the pushed changes, concatenated
	hashes   []crdt.Hash // their hashes
	imported int         // how many of them were new
	size     int         // the record's stored size once written
	mem      int64       // the document's memory then (see docMemory)
}

// enqueue merges the push onto the documents as they will be once every
// queued push is written, and queues its entries. infos are the pushed
// changes, framed.
func (cm *committer) enqueue(ctx context.Context, s *Server, p *transport.Push, infos [][]crdt.ChangeInfo) (w *waiter, err error) {
	// Records are locked, not the collection: merges of different records
	// run in parallel, and two pushes to one record take turns, the second
	// building on the first's queued document. The collection's lock is
	// held only to read and extend the queue.
	keys := make([]recordKey, 0, len(p.Records))
	for _, r := range p.Records {
		keys = append(keys, recordKey{cm.c, r.Record})
	}
	defer s.recLocks.Lock(keys...)()
	cm.mu.Lock()
	gen := cm.gen
	cm.mu.Unlock()
	recs := map[string]*merged{}
	var order []string // records in the order the push first names them
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
			rd, queued, unpin, err := cm.load(ctx, s, r.Record)
			if err != nil {
				return nil, err
			}
			m = &merged{rd: rd, unpin: unpin, base: rd.doc.Heads(), queued: queued}
			recs[r.Record] = m
			order = append(order, r.Record)
		}
		if err := m.merge(r, infos[i]); err != nil {
			return nil, err
		}
	}
	w = &waiter{fence: p.Fence, ack: &transport.Ack{Collection: cm.c.Collection}, done: make(chan result, 1), lead: make(chan struct{}, 1)}
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
		if !m.queued {
			s.docs.Remove(recordKey{cm.c, id})
		} else if err := m.rd.doc.Reset(m.base); err != nil {
			s.log.Error("undoing a refused push on a queued document", "tenant", cm.c.Tenant, "collection", cm.c.Collection, "record", id, "err", err)
		}
	}
}

// merge imports one pushed record's changes, framed as infos.
func (m *merged) merge(r transport.RecordChanges, infos []crdt.ChangeInfo) error {
	// Import checks each change in time proportional to the change: it
	// must frame, be in Automerge's canonical encoding, and refer only to
	// operations the document holds, so that the record still saves and
	// loads once it is in.
	n, err := m.rd.doc.Import(r.Data)
	if errors.Is(err, crdt.ErrOpLimit) {
		return perr(transport.CodeTooLarge, "record %q: %v (max_record_ops)", r.Record, err)
	}
	if err != nil {
		if errors.Is(err, crdt.ErrCorrupt) || errors.Is(err, crdt.ErrMissingDeps) {
			return perr(transport.CodeInvalidChange, "record %q: %v", r.Record, err)
		}
		return err
	}
	m.imported += n
	m.data = append(m.data, r.Data...)
	for _, in := range infos {
		m.hashes = append(m.hashes, in.Hash)
	}
	return nil
}

// entry returns the log entry of a record the push changed, now at heads,
// and sets the record's stored size, refusing what could not be sent to a
// device: a log entry past max_record, or a record past it.
func (m *merged) entry(s *Server, id string, heads crdt.Heads) (Entry, error) {
	delta, hashes := m.data, m.hashes
	if m.imported != len(m.hashes) {
		// Some pushed changes were held already: store only the new.
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
	// The stored size (snapshot and tail) bounds the saved document's;
	// only a record near the limit pays for saving it to know exactly.
	if len(delta) > s.maxRecord() {
		return Entry{}, perr(transport.CodeTooLarge, "record %q: %d bytes of new changes in one push, over max_record %d", id, len(delta), s.maxRecord())
	}
	m.size = m.rd.size + len(delta)
	if m.size > s.maxRecord() {
		// Near the limit by the estimate: measure. The saved size then
		// replaces the estimate, which grew by every push since the record
		// was loaded and so overstates a compacted record.
		saved := len(m.rd.doc.Save())
		if saved > s.maxRecord() {
			return Entry{}, perr(transport.CodeTooLarge, "record %q: the push would grow its document to %d bytes, over max_record %d", id, saved, s.maxRecord())
		}
		m.size = saved
	}
	m.mem = docMemory(m.rd.doc, m.size)
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
		m.rd.size, m.rd.mem = m.size, m.mem
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
	}
	return nil
}

// load returns a record's document as it will be once the queue is
// written: queued (queued=true), cached, or stored (and cached). The
// caller holds the record's lock, and the document is pinned in s.docs
// until unpin: the cache frees a document that leaves it, once no pin
// holds it.
func (cm *committer) load(ctx context.Context, s *Server, id string) (rd *relayDoc, queued bool, unpin func(), err error) {
	key := recordKey{cm.c, id}
	cm.mu.Lock()
	rd, queued = cm.queued[id]
	if queued {
		// The queue's pin holds it: written cannot drop that pin while
		// cm.mu is held.
		unpin, _ = s.docs.Pin(key, rd)
	}
	cm.mu.Unlock()
	if queued {
		return rd, true, unpin, nil
	}
	if rd, unpin, ok := s.docs.Acquire(key); ok {
		return rd, false, unpin, nil
	}
	rec, err := s.store.Record(ctx, cm.c, id)
	if errors.Is(err, ErrNotFound) {
		d, err := crdt.New("")
		if err != nil {
			return nil, false, nil, err
		}
		d.SetMaxOps(s.limits.MaxRecordOps)
		rd = &relayDoc{doc: d, mem: docMemory(d, 0)}
		return rd, false, s.docs.PutAcquire(key, rd, rd.cost()), nil
	}
	if err != nil {
		return nil, false, nil, err
	}
	d, err := crdt.Load(rec.Data(), "")
	if err == nil && !d.Heads().Equal(rec.Heads) {
		err = fmt.Errorf("it loads at heads %v, the store says %v", d.Heads(), rec.Heads)
		d.Free()
	}
	if err != nil {
		return nil, false, nil, fmt.Errorf("%w: record %s/%s/%s: %w", ErrStoreDamaged, cm.c.Tenant, cm.c.Collection, id, err)
	}
	d.SetMaxOps(s.limits.MaxRecordOps)
	rd = &relayDoc{doc: d, size: rec.Size(), mem: docMemory(d, rec.Size())}
	return rd, false, s.docs.PutAcquire(key, rd, rd.cost()), nil
}

// flush writes queued groups until own's is durable, then hands the
// flushing role to the next queued push's handler, so no client waits on
// other clients' writes for long. One handler flushes at a time.
func (cm *committer) flush(ctx context.Context, s *Server, own *waiter) {
	cm.mu.Lock()
	for len(cm.queue) > 0 && len(own.done) == 0 {
		group, entries, docs := cm.nextGroup()
		cm.mu.Unlock()
		var seq uint64
		var err error
		if len(entries) > 0 {
			seq, err = s.store.Append(context.WithoutCancel(ctx), cm.c, group[0].fence, s.now(), entries)
		} else {
			seq, err = s.store.Head(context.WithoutCancel(ctx), cm.c)
		}
		cm.mu.Lock()
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

// nextGroup takes the pushes at the head of the queue that share one fence
// (the store checks one per Append), with their entries and the documents
// these leave. cm.mu is held.
func (cm *committer) nextGroup() (group []*waiter, entries []Entry, docs map[string]*relayDoc) {
	n := 1
	for n < len(cm.queue) && cm.queue[n].fence == cm.queue[0].fence {
		n++
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
	for id := range cm.queued {
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
	for id, d := range docs {
		s.docs.PutSized(recordKey{cm.c, id}, d, d.cost())
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
	// Subscribers get the entries from memory, now that they are durable:
	// no read of the store on the live path.
	logged := make([]LogEntry, len(entries))
	for i, e := range entries {
		logged[i] = LogEntry{Seq: seq - uint64(len(entries)-1-i), Record: e.Record, Changes: e.Changes, Heads: e.Heads}
	}
	s.hub.publish(cm.c, logged)
	s.compactor.appended(cm.c)
}

func countHashes(es []Entry) int {
	n := 0
	for _, e := range es {
		n += len(e.Hashes)
	}
	return n
}
