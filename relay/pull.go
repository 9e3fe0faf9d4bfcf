package relay

import (
	"context"
	"errors"
	"time"

	"github.com/ferrysync/ferry/transport"
)

// pull answers a pull. A fresh pull (cursor 0) pages through the records'
// documents, so a new device gets one snapshot per record instead of the
// whole history; it continues from the Next of the first page. Any other
// cursor reads the log after it.
func (s *Server) pull(ctx context.Context, c Coll, p *transport.Pull) (*transport.Changes, error) {
	limit := int(p.Limit)
	if limit <= 0 || limit > s.limits.MaxBatch {
		limit = s.limits.MaxBatch
	}
	if p.Cursor == 0 {
		return s.pullSnapshots(ctx, c, p.After, limit)
	}
	recs, next, more, err := s.readLog(ctx, c, p.Cursor, limit)
	if err != nil {
		return nil, err
	}
	s.metrics.bytesOut.Add(float64(changeBytes(recs)))
	return &transport.Changes{Collection: c.Collection, Records: recs, Next: next, More: more}, nil
}

func (s *Server) pullSnapshots(ctx context.Context, c Coll, after string, limit int) (*transport.Changes, error) {
	// The head is read first: every change up to it is in the snapshots
	// read next, so continuing from it misses nothing (and a change
	// delivered twice is ignored by the device).
	head, err := s.store.Head(ctx, c)
	if err != nil {
		return nil, err
	}
	recs, err := s.store.Records(ctx, c, after, limit)
	if err != nil {
		return nil, err
	}
	out := &transport.Changes{Collection: c.Collection, Next: head, More: len(recs) == limit}
	// A page holds what fits one frame. A record that does not fit after
	// others waits for the next page, where it comes first: pushes keep
	// every record within max_record, and a frame holds a record of
	// max_record alone (transport.Limits.Check), so no page fails because
	// one record is large.
	budget := s.limits.MaxFrame - transport.FrameOverhead
	for i, rec := range recs {
		if s.compactor.damaged(recordKey{c, rec.ID}) {
			// Known not to load: a device would refuse it, and fail its
			// sync with it. Looked at again, in case it was repaired.
			if checkLoads(c, rec) != nil {
				out.After = rec.ID
				continue
			}
			s.compactor.recovered(recordKey{c, rec.ID})
		}
		data := rec.Data()
		if len(data) > s.maxRecord() {
			// Its tail has grown since its last compaction: send it saved
			// whole, which max_record bounds.
			if data, err = s.compactNow(ctx, c, rec, true); errors.Is(err, ErrStoreDamaged) {
				// A damaged record must not keep every fresh device from
				// the rest of the collection: it is left out, and reported.
				s.reportFailure(c, rec.ID, "a fresh pull left out a record that does not load", err)
				out.After = rec.ID
				continue
			} else if err != nil {
				return nil, err
			}
		}
		size := pageSize(i, len(data), rec.ID, len(rec.Heads))
		if size > budget {
			if i == 0 {
				// Only a record stored under a larger max_record gets here.
				s.log.Error("record larger than a frame; raise max_record and max_frame", "tenant", c.Tenant, "collection", c.Collection, "record", rec.ID, "bytes", len(data), "max_record", s.limits.MaxRecord)
				return nil, perr(transport.CodeTooLarge, "record %q is %d bytes, over what one frame carries", rec.ID, len(data))
			}
			out.More = true
			break
		}
		budget -= size
		out.Records = append(out.Records, transport.RecordChanges{
			Record: rec.ID, Seq: rec.Seq, Snapshot: true, Data: data, Heads: rec.Heads.Slices(),
		})
		out.After = rec.ID
		s.metrics.bytesOut.Add(float64(len(data)))
	}
	return out, nil
}

// pageSize is what one record adds to a changes message: the i-th record
// of the page, with data bytes. The first record's ID, heads and keys are
// in transport.FrameOverhead.
func pageSize(i, data int, record string, heads int) int {
	if i == 0 {
		return data
	}
	return data + len(record) + (transport.HeadSize+2)*heads + transport.RecordOverhead
}

// readLog reads log entries after cursor, as many as fit one frame.
func (s *Server) readLog(ctx context.Context, c Coll, cursor uint64, limit int) ([]transport.RecordChanges, uint64, bool, error) {
	entries, err := s.store.Log(ctx, c, cursor, limit)
	var te *TruncatedError
	if errors.As(err, &te) {
		return nil, cursor, false, perr(transport.CodeTruncated, "cursor %d is below the log's horizon %d: pull from cursor 0 (snapshots) and merge", cursor, te.Horizon)
	}
	if err != nil {
		return nil, cursor, false, err
	}
	recs, next, more := s.page(entries, cursor, len(entries) == limit)
	return recs, next, more, nil
}

// liveRead returns a subscriber's next live message, encoded: what the
// log holds after cursor, as much as fits one message, or nil if nothing.
// The entries the last appends made are sent from memory, without reading
// the store back, and the message made of them is kept, so that the
// subscribers at one cursor, usually all of them, share one encoding.
func (s *Server) liveRead(ctx context.Context, c Coll, cursor uint64, limit int) (*liveFrame, error) {
	if entries, f, ok := s.hub.since(c, cursor, limit); ok {
		if f != nil || len(entries) == 0 {
			return f, nil
		}
		last := entries[len(entries)-1].Seq
		recs, next, more := s.page(entries, cursor, len(entries) == limit)
		f, err := encodeLive(c, recs, next, more)
		if err != nil {
			return nil, err
		}
		f.cursor, f.last, f.limit = cursor, last, limit
		s.hub.keepLive(c, f)
		return f, nil
	}
	recs, next, more, err := s.readLog(ctx, c, cursor, limit)
	if err != nil || len(recs) == 0 {
		return nil, err
	}
	return encodeLive(c, recs, next, more)
}

// encodeLive encodes a live message of recs.
func encodeLive(c Coll, recs []transport.RecordChanges, next uint64, more bool) (*liveFrame, error) {
	b, err := transport.EncodeBody(0, &transport.Live{Collection: c.Collection, Records: recs, Next: next, More: more})
	if err != nil {
		return nil, err
	}
	return &liveFrame{frame: b, next: next, more: more, changes: changeBytes(recs)}, nil
}

// page turns log entries after cursor into the records of one message, as
// many as fit one frame. more says entries are left after next.
func (s *Server) page(entries []LogEntry, cursor uint64, more bool) ([]transport.RecordChanges, uint64, bool) {
	budget := s.limits.MaxFrame - transport.FrameOverhead
	recs := make([]transport.RecordChanges, 0, len(entries))
	next := cursor
	for i, e := range entries {
		// The first entry always goes: pushes keep each entry's changes
		// within max_record, which a frame holds alone.
		size := pageSize(i, len(e.Changes), e.Record, len(e.Heads))
		if size > budget && i > 0 {
			more = true
			break
		}
		budget -= size
		recs = append(recs, transport.RecordChanges{Record: e.Record, Seq: e.Seq, Data: e.Changes, Heads: e.Heads.Slices()})
		next = e.Seq
	}
	return recs, next, more
}

// subscribe streams the collection's log after cursor to the session as
// live messages until ctx ends. The log is the truth and the hub only a
// wake-up, so the subscriber never misses or reorders an entry, and the
// relay holds nothing per subscriber but its cursor: a subscriber that
// falls more than MaxLag entries behind, or does not take a message within
// SlowWriteTimeout, is disconnected with slow_consumer and resumes from its
// cursor with a pull.
//
// The session's token is checked before every delivery and when it
// expires: a subscription that outlives its token (the device sent no
// auth in time) or whose refreshed token no longer grants the collection
// ends the session with token_expired or forbidden.
//
// With early, the subscriber also gets the changes of each group of pushes
// being written, once checked and before they are durable, in a live
// message marked early that leaves its cursor where it is; they come again
// with their sequence numbers once durable. See docs/protocol.md.
func (s *Server) subscribe(ctx context.Context, sess *session, c Coll, cursor uint64, early bool) {
	s.metrics.subscribers.Inc()
	defer s.metrics.subscribers.Dec()
	defer s.hub.subscribed(c, early)()
	var sent *uint64 // the last early group sent, if early
	if early {
		sent = new(uint64)
	}
	for {
		var ok bool
		if cursor, ok = s.liveStep(ctx, sess, c, cursor, sent); !ok {
			return
		}
	}
}

// liveStep sends one live message of what the log holds after cursor, or,
// with early not nil and nothing durable left to send, of the group being
// written if it is past *early; or it waits for the log to grow or the
// token to expire. It returns the cursor to go on from, or false when the
// subscription is over.
func (s *Server) liveStep(ctx context.Context, sess *session, c Coll, cursor uint64, early *uint64) (uint64, bool) {
	wake, done := s.hub.wait(c)
	defer done()
	keysChanged := s.auth.Changed() // before the check, so no reload slips between
	claims := sess.currentClaims()
	if e := s.liveDenied(claims, c.Collection); e != nil {
		sess.end(e.Code, e.Message)
		return cursor, false
	}
	lv, err := s.liveRead(ctx, c, cursor, s.limits.MaxBatch)
	var pe *transport.Error
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return cursor, false
	case errors.As(err, &pe) && pe.Code == transport.CodeTruncated:
		// The device catches up from snapshots, then subscribes again.
		sess.end(pe.Code, pe.Message)
		return cursor, false
	default:
		s.log.Error("subscription read failed", "tenant", c.Tenant, "collection", c.Collection, "err", err)
		sess.end(transport.CodeInternal, "subscription failed")
		return cursor, false
	}
	if lv != nil {
		if lv.more {
			head, err := s.store.Head(ctx, c)
			if err == nil && head-cursor > uint64(s.opts.MaxLag) {
				if sess.end(transport.CodeSlowConsumer, "subscriber fell too far behind; pull from your cursor") {
					s.metrics.slowConsumers.Inc()
				}
				return cursor, false
			}
		}
		s.metrics.bytesOut.Add(float64(lv.changes))
		if !s.sendFrame(ctx, sess, c, lv.frame, 2*lv.changes) {
			return cursor, false
		}
		return lv.next, true
	}
	if early != nil {
		if g, ok := s.hub.earlyAfter(c, *early); ok {
			*early = g.id
			// A group that does not fit one message comes durable only.
			if recs, ok := s.earlyPage(g.entries); ok {
				if !s.sendLive(ctx, sess, c, &transport.Live{Collection: c.Collection, Records: recs, Next: cursor, Early: true}) {
					return cursor, false
				}
				return cursor, true
			}
		}
	}
	// Nothing to send: wait for the log to grow, for the token to expire,
	// or for the apps' keys to be reloaded, whichever comes first; then
	// the loop checks the session's claims again, which auth may have
	// replaced.
	ch, stop := s.newTimer(claims.ValidUntil().Sub(s.now()))
	defer stop()
	select {
	case <-ctx.Done():
		return cursor, false
	case <-wake:
	case <-ch:
	case <-keysChanged:
	}
	return cursor, true
}

// sendLive sends a live message, and reports false if the subscription is
// over.
func (s *Server) sendLive(ctx context.Context, sess *session, c Coll, lv *transport.Live) bool {
	frame, err := transport.EncodeBody(0, lv)
	if err != nil {
		s.log.Error("encoding a live message failed", "tenant", c.Tenant, "collection", c.Collection, "err", err)
		sess.end(transport.CodeInternal, "subscription failed")
		return false
	}
	return s.sendFrame(ctx, sess, c, frame, liveBytes(lv.Records))
}

// sendFrame sends an encoded live message, which takes mem bytes of memory
// while on its way, and reports false if the subscription is over.
func (s *Server) sendFrame(ctx context.Context, sess *session, c Coll, frame []byte, mem int64) bool {
	// Counted while it is on its way, without waiting: its changes are
	// mostly the hub's recent entries, or a group being written, in
	// memory already.
	g := s.mem.charge(mem)
	defer g.release()
	// SendEncodedWithin bounds the write itself: a device that stops
	// reading is cut off (close 4001) SlowWriteTimeout after the message
	// was due, not left to fill the relay's socket buffers until keepalive
	// gives up on it.
	if err := sess.conn.SendEncodedWithin(ctx, transport.TypeLive, frame, s.opts.SlowWriteTimeout); err != nil {
		// Other subscriptions of the session may see the cut too: the
		// session ends once, and is counted once.
		if errors.Is(err, transport.ErrSlowConsumer) && sess.end(transport.CodeSlowConsumer, "subscriber did not read in time") {
			s.metrics.slowConsumers.Inc()
		}
		return false
	}
	return true
}

// earlyPage turns a group being written into the records of one early live
// message, if they fit one (max_batch, max_frame).
func (s *Server) earlyPage(entries []LogEntry) ([]transport.RecordChanges, bool) {
	if len(entries) > s.limits.MaxBatch {
		return nil, false
	}
	budget := s.limits.MaxFrame - transport.FrameOverhead
	recs := make([]transport.RecordChanges, 0, len(entries))
	for i, e := range entries {
		if budget -= pageSize(i, len(e.Changes), e.Record, len(e.Heads)); budget < 0 {
			return nil, false
		}
		recs = append(recs, transport.RecordChanges{Record: e.Record, Data: e.Changes, Heads: e.Heads.Slices()})
	}
	return recs, true
}

// liveBytes is what a live message of recs takes, roughly: its changes
// and, once encoded, as much again.
func liveBytes(recs []transport.RecordChanges) int64 {
	return 2 * changeBytes(recs)
}

// changeBytes is the change bytes recs carry.
func changeBytes(recs []transport.RecordChanges) int64 {
	var n int64
	for _, r := range recs {
		n += int64(len(r.Data))
	}
	return n
}

// liveDenied says why a session holding claims may not receive live
// changes of coll any more, or returns nil if it may.
func (s *Server) liveDenied(claims *Claims, coll string) *transport.Error {
	if e := s.expired(claims); e != nil {
		return e
	}
	if !claims.CanRead(coll) {
		return perr(transport.CodeForbidden, "the session's token no longer grants read on %q", coll)
	}
	return nil
}

// newTimer returns a channel that receives once d has passed, and a
// function that stops it.
func (s *Server) newTimer(d time.Duration) (<-chan time.Time, func() bool) {
	if s.hooks.newTimer != nil {
		return s.hooks.newTimer(d)
	}
	t := time.NewTimer(d)
	return t.C, t.Stop
}
