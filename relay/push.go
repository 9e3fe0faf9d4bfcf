package relay

import (
	"cmp"
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// recordKey names one record of one tenant's collection: the key of the
// document cache and of the locks that serialize merges per record.
type recordKey struct {
	c      Coll
	record string
}

// compareRecordKeys orders record keys, for the order keylock takes them.
func compareRecordKeys(a, b recordKey) int {
	return cmp.Or(cmp.Compare(a.c.Tenant, b.c.Tenant), cmp.Compare(a.c.Collection, b.c.Collection), cmp.Compare(a.record, b.record))
}

// relayDoc is a record's document as the relay merges pushes into it.
type relayDoc struct {
	doc *crdt.Doc
	// saved is the document's saved size when last measured (as loaded:
	// its snapshot's, a saved document), and unsaved the bytes of the
	// changes merged into it since: they tell a push when the document
	// may be near max_record, and must be saved to know (merged.entry).
	saved, unsaved int
	// credit is the change bytes pushed to the record since its saved
	// size was last measured, merged or refused: it pays for measuring
	// again (see mayMeasure). loaded says saved and unsaved are the
	// stored snapshot's and tail's sizes, not measured since the load:
	// the load pays for one measure. Both are read and written under the
	// record's lock.
	credit int
	loaded bool
	// dropped is set when the document leaves the cache because it holds
	// changes that will never be written (a refused push's, or a refused
	// group's): a push that found it before cannot build on it.
	dropped atomic.Bool
	// seen is the stale mark (see stale.go) as of the document's last
	// read from the store, or check against it.
	seen atomic.Uint64
	// mem is the memory the document takes, estimated by docMemory when
	// it is loaded and when a push's entry is made, under the record's
	// lock; read and written under the committer's lock once queued.
	mem int64
	// grant holds mem of the relay's memory budget from the document's
	// load until free.
	grant *memGrant
}

// cost is what the document counts for in the relay's document cache: the
// memory it takes (see Options.DocCacheBytes).
func (rd *relayDoc) cost() int64 { return rd.mem }

// pushCounted runs a push, counting it as in progress for its collection,
// and returns its ack once durable: startPush, then wait. Every push must
// come through here or startPush.
func (s *Server) pushCounted(ctx context.Context, c Coll, p *transport.Push) (*transport.Ack, error) {
	ps, err := s.startPush(ctx, c, p, nil)
	if err != nil {
		return nil, err
	}
	return ps.wait()
}

// pushing is a push handed to its collection's group commit: checked and
// merged, queued for a group (or to be merged again), not yet answered.
//
// A collection's committer is only needed while pushes to it are in
// progress: when the last one ends, the queue is empty (each push waits
// until its own group is durable, and hands the flush to a queued push,
// which still counts), so the committer is dropped and the map holds only
// the collections being pushed to.
type pushing struct {
	s   *Server
	ctx context.Context
	c   Coll
	p   *transport.Push
	cm  *committer
	// framed are the push's records' changes, framed once.
	framed []*crdt.Framed
	// w is the push's place in the queue, or nil with err errRemerge: the
	// documents it was merged onto were dropped, merge it again.
	w   *waiter
	err error
	// before, if not nil, is closed once the push sent before this one on
	// the same connection is answered: a push merged again waits for it,
	// so that it never overtakes that one (see session.pushAhead).
	before    <-chan struct{}
	quotaDone func(stored bool)
	mem       *memGrant
}

// startPush admits, checks and merges a push, queues it for its
// collection's group commit and returns it without waiting for the group
// to be durable; wait returns its ack. A push refused before it is queued
// returns the refusal, and needs no wait. before is as in pushing.
func (s *Server) startPush(ctx context.Context, c Coll, p *transport.Push, before <-chan struct{}) (*pushing, error) {
	quotaDone, err := s.quotas.admitPush(ctx, c.Tenant, p)
	if err != nil {
		return nil, err
	}
	framed, mem, err := s.admitPushMemory(ctx, p)
	if err != nil {
		quotaDone(false)
		return nil, err
	}
	ps := &pushing{s: s, ctx: withPushGrant(ctx, mem), c: c, p: p, before: before, quotaDone: quotaDone, mem: mem}
	s.mu.Lock()
	s.pushes[c]++
	s.mu.Unlock()
	if framed == nil {
		// Inflated while admitted: framed again, within the grant.
		if framed, _, err = s.parsePush(p); err != nil {
			ps.finish(err)
			return nil, err
		}
	}
	ps.framed = framed
	ps.cm = s.committer(c)
	ps.w, ps.err = ps.cm.enqueue(ps.ctx, s, p, ps.framed)
	if ps.err != nil && !errors.Is(ps.err, errRemerge) {
		ps.finish(ps.err)
		return nil, ps.err
	}
	return ps, nil
}

// wait returns the push's ack once its group is durable, or why it was
// refused, and ends the push. It is called once.
func (ps *pushing) wait() (*transport.Ack, error) {
	ack, err := ps.s.push(ps)
	ps.finish(err)
	return ack, err
}

// finish ends a push: its quota and memory are released, and it no longer
// counts for its collection's committer.
func (ps *pushing) finish(err error) {
	ps.quotaDone(err == nil)
	ps.mem.release()
	s, c := ps.s, ps.c
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pushes[c]--
	if s.pushes[c] == 0 {
		delete(s.pushes, c)
		if cm := s.committers[c]; cm != nil {
			if m := cm.lastWritten(); m != nil && time.Since(m.at) < s.groupWait {
				s.keepGroupMark(c, *m)
			}
		}
		delete(s.committers, c)
	}
}

// acked notes that a push to c was answered with its ack (see
// committer.acked). With no committer for c (its last pushes ended), the
// group mark kept for the next one takes the time.
func (s *Server) acked(c Coll) {
	now := time.Now()
	s.mu.Lock()
	cm := s.committers[c]
	if cm == nil {
		if m, ok := s.lastGroups[c]; ok && now.After(m.at) {
			m.at = now
			s.lastGroups[c] = m
		}
	}
	s.mu.Unlock()
	if cm != nil {
		cm.acked(now)
	}
}

// keepGroupMark keeps m, the last group a dropped committer of c wrote,
// for the next committer of c. s.mu is held. The marks are few: only
// those younger than groupWait are of use, and older ones are dropped
// when they pile up.
func (s *Server) keepGroupMark(c Coll, m groupMark) {
	if len(s.lastGroups) >= maxGroupMarks {
		for k, x := range s.lastGroups {
			if time.Since(x.at) >= s.groupWait {
				delete(s.lastGroups, k)
			}
		}
		if len(s.lastGroups) >= maxGroupMarks {
			return
		}
	}
	s.lastGroups[c] = m
}

// maxGroupMarks bounds Server.lastGroups: collections written within the
// last groupWait whose pushes all ended.
const maxGroupMarks = 1024

// parsePush frames and checksums every change of a push before any lock
// is taken, and returns them with the bytes compressed chunks inflated
// to. One inflate budget for the whole push, max_inflated: what one push
// may make the relay inflate.
func (s *Server) parsePush(p *transport.Push) ([]*crdt.Framed, int64, error) {
	return s.parsePushWithin(p, int64(s.limits.MaxInflated))
}

// errPushInflates is parsePushWithin's refusal of a push that would
// inflate past limit when limit is below max_inflated: it may still fit
// max_inflated.
var errPushInflates = errors.New("relay: the push holds compressed changes")

// parsePushWithin is parsePush with an inflate budget of limit bytes.
func (s *Server) parsePushWithin(p *transport.Push, limit int64) ([]*crdt.Framed, int64, error) {
	framed := make([]*crdt.Framed, len(p.Records))
	budget := crdt.NewInflateBudget(limit)
	for i, r := range p.Records {
		if err := transport.ValidateRecordID(r.Record); err != nil {
			return nil, 0, perr(transport.CodeBadFrame, "%v", err)
		}
		var err error
		if framed[i], err = crdt.FrameChanges(r.Data, budget); err != nil {
			if errors.Is(err, crdt.ErrInflateLimit) {
				if limit < int64(s.limits.MaxInflated) {
					return nil, 0, errPushInflates
				}
				return nil, 0, perr(transport.CodeTooLarge, "record %q: compressed changes inflate past max_inflated, %d bytes for one push", r.Record, s.limits.MaxInflated)
			}
			return nil, 0, perr(transport.CodeInvalidChange, "record %q: %v", r.Record, err)
		}
	}
	return framed, limit - budget.Remaining(), nil
}

// admitPushMemory frames a push (parsePush) and reserves what it takes while it
// is checked, merged and waits for its group commit: its bytes, what they
// inflated to, and what its changes add to the documents they are merged
// into (crdt.Framed.Estimate). The documents themselves are reserved as
// they are loaded (see loadCounted). A push that does not frame is
// refused before it waits for memory. If compressed chunks were
// inflated, framed is nil: what they inflated to is not held while the
// push waits for memory, and the caller frames them again once it has it.
//
// Framing inflates nothing until max_inflated is reserved for it: a
// first pass inflates nothing, and only a push that holds compressed
// changes waits for that much memory and is framed again. Otherwise every
// connection could make the relay inflate max_inflated at once, outside
// the budget.
func (s *Server) admitPushMemory(ctx context.Context, p *transport.Push) (framed []*crdt.Framed, g *memGrant, err error) {
	framed, inflated, err := s.parsePushWithin(p, 0)
	if errors.Is(err, errPushInflates) {
		pre, perr := s.mem.acquire(ctx, int64(s.limits.MaxInflated))
		if perr != nil {
			return nil, nil, memErr(perr, "the push's compressed changes")
		}
		framed, inflated, err = s.parsePush(p)
		pre.release()
	}
	if err != nil {
		return nil, nil, err
	}
	n := inflated
	for i, r := range p.Records {
		n += int64(len(r.Data))
		if est, err := framed[i].Estimate(); err == nil {
			n += est.Bytes
		}
	}
	if inflated > 0 {
		framed = nil
	}
	g, err = s.mem.acquire(ctx, n)
	if err != nil {
		return nil, nil, memErr(err, "the push")
	}
	return framed, g, nil
}

// push waits for a queued push (startPush) to be durable and returns its
// ack. Every record's changes must load as Automerge changes whose dependencies
// the relay holds (or that come earlier in the push); otherwise the whole
// push is refused and nothing is stored. Changes the relay already holds
// are acknowledged without being stored again. A push that would grow a
// record's saved document past max_record is refused with too_large, so
// every document the relay holds, saved, fits one record of a changes
// message.
//
// Pushes are merged in memory, pushes to one record one at a time (each
// reads its documents from the store first, holding no lock), then
// committed in groups per collection: the pushes merged while the previous group was
// being written go into the next store Append, all or nothing to readers
// and one fsync for all of them (group commit; a Badger store writes a
// group larger than a transaction in several, published by the last),
// as many as the caps on a group's bytes and entries let in. A group the
// store refuses as too large (ErrAppendTooLarge) is written in halves; a push too
// large alone is refused with too_large. Each push is acknowledged once the
// group holding it is durable. If the store refuses a group, only that
// group's pushes fail; the pushes queued behind it, merged onto documents
// that were never written, are merged again onto what the store holds
// (each only once the push sent before it on its connection is answered).
// A group refused with ErrConflict (another relay process wrote one of its
// records) is merged again too, at most maxMerges times in all, before the
// device is told to retry (conflict).
func (s *Server) push(ps *pushing) (*transport.Ack, error) {
	ctx, c, p, cm := ps.ctx, ps.c, ps.p, ps.cm
	w, err := ps.w, ps.err
	for merges := 1; ; merges++ {
		if w != nil {
			var res result
			select {
			case res = <-w.done: // written by another push's flush
			case <-w.lead:
				cm.flush(ctx, s, w)
				res = <-w.done
			}
			switch err = res.err; {
			case err == nil:
				w.ack.Seq = res.seq
				if n := uint64(len(w.entries)); n > 0 {
					// The group's entries took consecutive numbers: this
					// push's are the n ending at its seq.
					w.ack.From = res.seq - n + 1
				}
				return w.ack, nil
			case errors.Is(err, errRemerge), errors.Is(err, ErrConflict):
			case errors.Is(err, ErrAppendTooLarge):
				// Alone, and still more than one store transaction holds.
				return nil, perr(transport.CodeTooLarge, "the push is more than the store writes at once; push fewer or smaller records at a time")
			case errors.Is(err, ErrStaleFence):
				return nil, perr(transport.CodeStaleFence, "fence %d is not the current lease of %q", p.Fence, c.Collection)
			default:
				return nil, err
			}
		}
		if merges >= maxMerges {
			break
		}
		if ps.before != nil {
			// The push before this one on its connection may be merged
			// again too: this one, which may build on it, goes after it.
			<-ps.before
		}
		if w, err = cm.enqueue(ctx, s, p, ps.framed); err != nil && !errors.Is(err, errRemerge) {
			return nil, err
		}
	}
	s.log.Warn("push still conflicting after merging again", "tenant", c.Tenant, "collection", c.Collection, "merges", maxMerges, "err", err)
	return nil, perr(transport.CodeConflict, "records of %q kept changing while this push was merged; push again", c.Collection)
}

// maxRecord is the largest document, or log entry, the relay stores: one
// a device can be sent. That is max_record, unless limits that fail
// transport.Limits.Check leave a frame too small for it.
func (s *Server) maxRecord() int {
	return min(s.limits.MaxRecord, s.limits.MaxFrame-transport.FrameOverhead)
}

// maxMerges bounds how often one push is merged onto the documents: once,
// and again each time the group it was in, or one ahead of it, is refused
// by the store.
const maxMerges = 8

// errRemerge tells a push that the documents it was merged onto were never
// written: merge it again onto what the store holds.
var errRemerge = errors.New("relay: merged onto documents that were not written")
