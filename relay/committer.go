package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// committer groups one collection's pushes into shared store appends.
type committer struct {
	c Coll

	mu       sync.Mutex // guards the fields below
	queue    []*waiter  // merged, waiting to be written
	queued   map[string]*relayDoc
	inQueue  map[string]int // entries in the queue per record
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
		cm = &committer{c: c, queued: map[string]*relayDoc{}, inQueue: map[string]int{}}
		s.committers[c] = cm
	}
	return cm
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
	type work struct {
		rd       *relayDoc
		base     crdt.Heads
		queued   bool        // holds other pushes' changes, not yet durable
		data     []byte      // the pushed changes, concatenated
		hashes   []crdt.Hash // their hashes
		imported int         // how many of them were new
	}
	recs := map[string]*work{}
	var order []string
	defer func() {
		if err == nil {
			return
		}
		// A refused push leaves no trace: a document only this push
		// touched is forgotten (the next push reloads it from the store),
		// and a queued one, which holds other pushes' changes, goes back
		// to what it was.
		for _, id := range order {
			wk := recs[id]
			if !wk.queued {
				s.docs.Remove(recordKey{cm.c, id})
			} else if rerr := wk.rd.doc.Reset(wk.base); rerr != nil {
				s.log.Error("undoing a refused push on a queued document", "tenant", cm.c.Tenant, "collection", cm.c.Collection, "record", id, "err", rerr)
			}
		}
	}()
	for i, r := range p.Records {
		wk := recs[r.Record]
		if wk == nil {
			rd, queued, err := cm.load(ctx, s, r.Record)
			if err != nil {
				return nil, err
			}
			wk = &work{rd: rd, base: rd.doc.Heads(), queued: queued}
			recs[r.Record] = wk
			order = append(order, r.Record)
		}
		// Import checks each change in time proportional to the change: it
		// must frame, be in Automerge's canonical encoding, and refer only
		// to operations the document holds, so that the record still
		// saves and loads once it is in.
		n, err := wk.rd.doc.Import(r.Data)
		if err != nil {
			if errors.Is(err, crdt.ErrCorrupt) || errors.Is(err, crdt.ErrMissingDeps) {
				return nil, perr(transport.CodeInvalidChange, "record %q: %v", r.Record, err)
			}
			return nil, err
		}
		wk.imported += n
		wk.data = append(wk.data, r.Data...)
		for _, in := range infos[i] {
			wk.hashes = append(wk.hashes, in.Hash)
		}
	}
	w = &waiter{fence: p.Fence, ack: &transport.Ack{Collection: cm.c.Collection}, done: make(chan result, 1), lead: make(chan struct{}, 1)}
	sizes := map[string]int{}
	for _, id := range order {
		wk := recs[id]
		heads := wk.rd.doc.Heads()
		w.ack.Records = append(w.ack.Records, transport.RecordAck{Record: id, Heads: heads.Slices()})
		if heads.Equal(wk.base) {
			continue // everything was already held (or queued)
		}
		delta, hashes := wk.data, wk.hashes
		if wk.imported != len(wk.hashes) {
			// Some pushed changes were held already: store only the new.
			if delta, err = wk.rd.doc.ChangesSince(wk.base); err != nil {
				return nil, err
			}
			in, err := crdt.ParseChanges(delta)
			if err != nil {
				return nil, err
			}
			hashes = make([]crdt.Hash, len(in))
			for i, c := range in {
				hashes[i] = c.Hash
			}
		}
		// Refuse what could not be sent to a device: a log entry past
		// max_record, or a record past it. The stored size (snapshot and
		// tail) bounds the saved document's; only a record near the limit
		// pays for saving it to know exactly.
		if len(delta) > s.maxRecord() {
			return nil, perr(transport.CodeTooLarge, "record %q: %d bytes of new changes in one push, over max_record %d", id, len(delta), s.maxRecord())
		}
		size := wk.rd.size + len(delta)
		if size > s.maxRecord() {
			// Near the limit by the estimate: measure. The saved size then
			// replaces the estimate, which grew by every push since the
			// record was loaded and so overstates a compacted record.
			saved := len(wk.rd.doc.Save())
			if saved > s.maxRecord() {
				return nil, perr(transport.CodeTooLarge, "record %q: the push would grow its document to %d bytes, over max_record %d", id, saved, s.maxRecord())
			}
			size = saved
		}
		sizes[id] = size
		w.entries = append(w.entries, Entry{Record: id, Base: wk.base, Changes: delta, Hashes: hashes, Heads: heads})
	}
	cm.mu.Lock()
	defer cm.mu.Unlock()
	if cm.gen != gen {
		// A failed append dropped the queue this push was merged onto.
		return nil, errRemerge
	}
	for _, e := range w.entries {
		rd := recs[e.Record].rd
		rd.size = sizes[e.Record]
		cm.queued[e.Record] = rd
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
	return w, nil
}

// load returns a record's document as it will be once the queue is
// written: queued (queued=true), cached, or stored.
func (cm *committer) load(ctx context.Context, s *Server, id string) (rd *relayDoc, queued bool, err error) {
	cm.mu.Lock()
	rd, queued = cm.queued[id]
	cm.mu.Unlock()
	if queued {
		return rd, true, nil
	}
	if rd, ok := s.docs.Get(recordKey{cm.c, id}); ok {
		return rd, false, nil
	}
	rec, err := s.store.Record(ctx, cm.c, id)
	if errors.Is(err, ErrNotFound) {
		d, err := crdt.New("")
		return &relayDoc{doc: d}, false, err
	}
	if err != nil {
		return nil, false, err
	}
	d, err := crdt.Load(rec.Data(), "")
	if err == nil && !d.Heads().Equal(rec.Heads) {
		err = fmt.Errorf("it loads at heads %v, the store says %v", d.Heads(), rec.Heads)
	}
	if err != nil {
		return nil, false, fmt.Errorf("%w: record %s/%s/%s: %w", ErrStoreDamaged, cm.c.Tenant, cm.c.Collection, id, err)
	}
	return &relayDoc{doc: d, size: rec.Size()}, false, nil
}

// flush writes queued groups until own's is durable, then hands the
// flushing role to the next queued push's handler, so no client waits on
// other clients' writes for long. One handler flushes at a time.
func (cm *committer) flush(ctx context.Context, s *Server, own *waiter) {
	cm.mu.Lock()
	for len(cm.queue) > 0 && len(own.done) == 0 {
		// A group shares one fence: the store checks one per Append.
		n := 1
		for n < len(cm.queue) && cm.queue[n].fence == cm.queue[0].fence {
			n++
		}
		group := cm.queue[:n]
		cm.queue = cm.queue[n:]
		docs := map[string]*relayDoc{}
		var entries []Entry
		for _, w := range group {
			entries = append(entries, w.entries...)
			for _, e := range w.entries {
				docs[e.Record] = cm.queued[e.Record]
			}
		}
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
			// Only this group's pushes fail (or, for ErrConflict, merge
			// again). The pushes queued behind it were merged onto its
			// documents, which were never written: every document goes
			// back to what the store holds, and they merge again onto it.
			behind := cm.queue
			cm.queue = nil
			for id := range cm.queued {
				s.docs.Remove(recordKey{cm.c, id})
			}
			clear(cm.queued)
			clear(cm.inQueue)
			cm.gen++
			for _, w := range group {
				w.done <- result{err: err}
			}
			for _, w := range behind {
				w.done <- result{err: errRemerge}
			}
			continue
		}
		// Each push's seq is its last entry's: the group's entries took
		// consecutive numbers ending at seq.
		last := seq
		for i := len(group) - 1; i >= 0; i-- {
			group[i].done <- result{seq: last}
			last -= uint64(len(group[i].entries))
		}
		for id, d := range docs {
			s.docs.Put(recordKey{cm.c, id}, d)
		}
		for _, e := range entries {
			// A document stays queued while a later push in the queue has
			// changes in it that are not written yet.
			if cm.inQueue[e.Record]--; cm.inQueue[e.Record] == 0 {
				delete(cm.inQueue, e.Record)
				delete(cm.queued, e.Record)
			}
		}
		if len(entries) > 0 {
			s.metrics.changes.Add(float64(countHashes(entries)))
			// Subscribers get the entries from memory, now that they are
			// durable: no read of the store on the live path.
			logged := make([]LogEntry, len(entries))
			for i, e := range entries {
				logged[i] = LogEntry{Seq: seq - uint64(len(entries)-1-i), Record: e.Record, Changes: e.Changes, Heads: e.Heads}
			}
			s.hub.publish(cm.c, logged)
			s.compactor.appended(cm.c)
		}
	}
	if len(cm.queue) > 0 {
		cm.queue[0].lead <- struct{}{}
	} else {
		cm.flushing = false
	}
	cm.mu.Unlock()
}

func countHashes(es []Entry) int {
	n := 0
	for _, e := range es {
		n += len(e.Hashes)
	}
	return n
}
