package relay

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

type cachedDoc struct {
	c      Coll
	record string
}

// maxPushAttempts bounds retries when a record changed under a push (only
// possible when several relay processes share a store).
const maxPushAttempts = 5

// push validates and stores a push, and returns its ack once durable.
// Every record's changes must load as Automerge changes whose dependencies
// the relay holds (or that come earlier in the push); otherwise the whole
// push is refused and nothing is stored. Changes the relay already holds
// are acknowledged without being stored again.
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
	defer s.locks.lock(c)()
	for attempt := 1; ; attempt++ {
		ack, err := s.pushOnce(ctx, c, p)
		if !errors.Is(err, ErrConflict) || attempt == maxPushAttempts {
			return ack, err
		}
	}
}

func (s *Server) pushOnce(ctx context.Context, c Coll, p *transport.Push) (*transport.Ack, error) {
	docs := map[string]*crdt.Doc{}
	bases := map[string]crdt.Heads{}
	var order []string
	// Any failure leaves cached documents holding changes that were not
	// stored: forget them so the next push reloads from the store.
	ok := false
	defer func() {
		if !ok {
			for _, id := range order {
				s.docs.Remove(cachedDoc{c, id})
			}
		}
	}()
	for _, r := range p.Records {
		d, found := docs[r.Record]
		if !found {
			var base crdt.Heads
			var err error
			if d, base, err = s.loadDoc(ctx, c, r.Record); err != nil {
				return nil, err
			}
			docs[r.Record], bases[r.Record] = d, base
			order = append(order, r.Record)
		}
		if _, err := d.Import(r.Data); err != nil {
			if errors.Is(err, crdt.ErrCorrupt) || errors.Is(err, crdt.ErrMissingDeps) {
				return nil, perr(transport.CodeInvalidChange, "record %q: %v", r.Record, err)
			}
			return nil, err
		}
	}
	ack := &transport.Ack{Collection: c.Collection}
	var entries []Entry
	for _, id := range order {
		d, base := docs[id], bases[id]
		heads := d.Heads()
		ack.Records = append(ack.Records, transport.RecordAck{Record: id, Heads: heads.Slices()})
		if heads.Equal(base) {
			continue // everything was already held
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
		entries = append(entries, Entry{Record: id, Base: base, Changes: delta, Hashes: hashes, Doc: saved, Heads: heads})
	}
	if len(entries) == 0 {
		seq, err := s.store.Head(ctx, c)
		if err != nil {
			return nil, err
		}
		ack.Seq = seq
		ok = true
		return ack, nil
	}
	seq, err := s.store.Append(ctx, c, p.Fence, s.now(), entries)
	if err != nil {
		if errors.Is(err, ErrStaleFence) {
			return nil, perr(transport.CodeStaleFence, "fence %d is not the current lease of %q", p.Fence, c.Collection)
		}
		return nil, err
	}
	ok = true
	for _, id := range order {
		s.docs.Put(cachedDoc{c, id}, docs[id])
	}
	ack.Seq = seq
	s.metrics.changes.Add(float64(countHashes(entries)))
	s.hub.notify(c)
	return ack, nil
}

// loadDoc returns the record's document, cached or from the store, and the
// stored heads it starts from (nil for a record the relay does not hold).
func (s *Server) loadDoc(ctx context.Context, c Coll, id string) (*crdt.Doc, crdt.Heads, error) {
	if d, ok := s.docs.Get(cachedDoc{c, id}); ok {
		return d, d.Heads(), nil
	}
	b, heads, err := s.store.Document(ctx, c, id)
	if errors.Is(err, ErrNotFound) {
		d, err := crdt.New("")
		return d, nil, err
	}
	if err != nil {
		return nil, nil, err
	}
	d, err := crdt.Load(b, "")
	if err != nil {
		return nil, nil, fmt.Errorf("relay: stored document %s/%s/%s: %w", c.Tenant, c.Collection, id, err)
	}
	return d, heads, nil
}

func countHashes(es []Entry) int {
	n := 0
	for _, e := range es {
		n += len(e.Hashes)
	}
	return n
}
