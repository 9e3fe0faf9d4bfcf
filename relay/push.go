package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

type cachedDoc struct {
	c      Coll
	record string
}

// push validates and stores a push, and returns its ack once durable.
// Every record's changes must load as Automerge changes whose dependencies
// the relay holds (or that come earlier in the push); otherwise the whole
// push is refused and nothing is stored. Changes the relay already holds
// are acknowledged without being stored again.
//
// Pushes to one collection are merged one at a time, in memory, then
// committed in groups: every push merged while the previous group was
// being written goes into the next store Append, one transaction and one
// fsync for all of them (group commit). Each push is acknowledged once the
// group holding it is durable.
func (s *Server) push(ctx context.Context, c Coll, p *transport.Push) (*transport.Ack, error) {
	for _, r := range p.Records {
		if err := validRecordID(r.Record); err != nil {
			return nil, err
		}
		// Frame and checksum every change before taking any lock.
		if _, err := crdt.ParseChanges(r.Data); err != nil {
			return nil, perr(transport.CodeInvalidChange, "record %q: %v", r.Record, err)
		}
	}
	cm := s.committer(c)
	w, err := cm.enqueue(ctx, s, p)
	if err != nil {
		return nil, err
	}
	var res result
	select {
	case res = <-w.done: // written by another push's flush
	case <-w.lead:
		cm.flush(ctx, s, w)
		res = <-w.done
	}
	if res.err != nil {
		if errors.Is(res.err, ErrStaleFence) {
			return nil, perr(transport.CodeStaleFence, "fence %d is not the current lease of %q", p.Fence, c.Collection)
		}
		return nil, res.err
	}
	w.ack.Seq = res.seq
	return w.ack, nil
}

// committer groups one collection's pushes into shared store appends.
type committer struct {
	c Coll

	mu       sync.Mutex // held while merging; guards the fields below
	queue    []*waiter  // merged, waiting to be written
	queued   map[string]*crdt.Doc
	flushing bool
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
		cm = &committer{c: c, queued: map[string]*crdt.Doc{}}
		s.committers[c] = cm
	}
	return cm
}

// enqueue merges the push onto the documents as they will be once every
// queued push is written, and queues its entries.
func (cm *committer) enqueue(ctx context.Context, s *Server, p *transport.Push) (*waiter, error) {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	docs := map[string]*crdt.Doc{}
	bases := map[string]crdt.Heads{}
	var order []string
	for _, r := range p.Records {
		d, found := docs[r.Record]
		if !found {
			var err error
			if d, err = cm.load(ctx, s, r.Record); err != nil {
				return nil, err
			}
			// The push works on a copy, so a refused push leaves the
			// queued documents as they were.
			if d, err = d.Fork(nil); err != nil {
				return nil, err
			}
			docs[r.Record], bases[r.Record] = d, d.Heads()
			order = append(order, r.Record)
		}
		if _, err := d.Import(r.Data); err != nil {
			if errors.Is(err, crdt.ErrCorrupt) || errors.Is(err, crdt.ErrMissingDeps) {
				return nil, perr(transport.CodeInvalidChange, "record %q: %v", r.Record, err)
			}
			return nil, err
		}
	}
	w := &waiter{fence: p.Fence, ack: &transport.Ack{Collection: cm.c.Collection}, done: make(chan result, 1), lead: make(chan struct{}, 1)}
	for _, id := range order {
		d, base := docs[id], bases[id]
		heads := d.Heads()
		w.ack.Records = append(w.ack.Records, transport.RecordAck{Record: id, Heads: heads.Slices()})
		if heads.Equal(base) {
			continue // everything was already held (or queued)
		}
		delta, err := d.ChangesSince(base)
		if err != nil {
			return nil, err
		}
		infos, err := crdt.ParseChanges(delta)
		if err != nil {
			return nil, err
		}
		hashes := make([]crdt.Hash, len(infos))
		for i, in := range infos {
			hashes[i] = in.Hash
		}
		// A crafted change can pass every check Import makes and still
		// leave a document whose saved form does not load (changes not in
		// Automerge's canonical encoding). Refuse it here, before any
		// device could receive such a record.
		saved := d.Save()
		if _, err := crdt.Load(saved, ""); err != nil {
			return nil, perr(transport.CodeInvalidChange, "record %q: the changes leave a document that does not reload: %v", id, err)
		}
		w.entries = append(w.entries, Entry{Record: id, Base: base, Changes: delta, Hashes: hashes, Doc: saved, Heads: heads})
	}
	for _, e := range w.entries {
		cm.queued[e.Record] = docs[e.Record]
	}
	// Even a push of changes already held waits for the queue: "held" may
	// mean merged but not yet durable.
	cm.queue = append(cm.queue, w)
	if !cm.flushing {
		cm.flushing = true
		w.lead <- struct{}{}
	}
	return w, nil
}

// load returns a record's document as it will be once the queue is
// written: queued, cached, or stored.
func (cm *committer) load(ctx context.Context, s *Server, id string) (*crdt.Doc, error) {
	if d, ok := cm.queued[id]; ok {
		return d, nil
	}
	if d, ok := s.docs.Get(cachedDoc{cm.c, id}); ok {
		return d, nil
	}
	b, _, err := s.store.Document(ctx, cm.c, id)
	if errors.Is(err, ErrNotFound) {
		return crdt.New("")
	}
	if err != nil {
		return nil, err
	}
	d, err := crdt.Load(b, "")
	if err != nil {
		return nil, fmt.Errorf("relay: stored document %s/%s/%s: %w", cm.c.Tenant, cm.c.Collection, id, err)
	}
	return d, nil
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
		docs := map[string]*crdt.Doc{}
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
			// Pushes merged after this group built on it: they fail too,
			// and every document goes back to what the store holds.
			for _, w := range cm.queue {
				group = append(group, w)
			}
			cm.queue = nil
			for id := range cm.queued {
				s.docs.Remove(cachedDoc{cm.c, id})
			}
			clear(cm.queued)
			for _, w := range group {
				w.done <- result{err: err}
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
			s.docs.Put(cachedDoc{cm.c, id}, d)
			if cm.queued[id] == d {
				delete(cm.queued, id) // no later push in the queue changed it
			}
		}
		if len(entries) > 0 {
			s.metrics.changes.Add(float64(countHashes(entries)))
			s.hub.notify(cm.c)
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
