package replica

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// outgoing is one record's changes in a push.
type outgoing struct {
	id      string
	changes []byte
	heads   crdt.Heads // the record's heads once changes are applied
	base    crdt.Heads // the heads changes were taken since (nil: all of them)
	known   bool       // the relay held some of the record before
	deleted bool
	// partial marks a piece of a record's changes other than the last
	// (see pieces): acknowledged, but not counted as a record pushed.
	partial bool
}

// push sends every pending record's changes since the heads the relay
// holds, in batches within the relay's limits, with the lease's fence, and
// records what the relay acknowledged. Records whose merge hook failed
// stay back until it succeeds, and records holding a conflict resolution
// stay back unless the sync holds the lease (see merge.go).
func (s *collSync) push(ctx context.Context) error {
	c := &Collection{r: s.r, name: s.coll}
	ids, err := c.Pending()
	if err != nil {
		return err
	}
	held, err := s.r.idSet('q', s.coll)
	if err != nil {
		return err
	}
	if s.lease == nil {
		resolved, err := s.r.idSet('l', s.coll)
		if err != nil {
			return err
		}
		for id := range resolved {
			held[id] = true
			s.heldResolutions = true
		}
	}
	limits := s.conn.welcome.Limits.WithDefaults()
	budget := limits.MaxFrame - transport.FrameOverhead
	maxData := min(limits.MaxRecord, budget)
	var batch []outgoing
	size, done := 0, 0
	total := len(ids)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		n, err := s.pushBatch(ctx, batch)
		done += n
		s.progress(ToRelay, total, done)
		batch, size = nil, 0
		if err != nil {
			return err
		}
		return s.lease.keep(ctx)
	}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		if held[id] {
			total--
			continue
		}
		o, err := s.r.outgoing(s.coll, id)
		if errors.Is(err, ErrCorrupt) {
			// A damaged record fails alone; the others are pushed.
			s.cs.Failed = append(s.cs.Failed, failedRecord(id, err))
			continue
		}
		if err != nil {
			return err
		}
		if o.changes == nil {
			total--
			continue
		}
		parts := []outgoing{o}
		if len(o.changes) > maxData {
			// A record's history can pass max_record while its document,
			// which max_record bounds, does not: push it in pieces.
			if parts, err = pieces(o, maxData); err != nil {
				err = fmt.Errorf("%w: %s/%s has %d bytes of changes to push, which do not fit the relay's max_record %d: %w", ErrTooLarge, s.coll, id, len(o.changes), limits.MaxRecord, err)
				s.cs.Failed = append(s.cs.Failed, failedRecord(id, err))
				s.r.log.Warn("record's changes cannot be pushed within the relay's max_record", "collection", s.coll, "record", id, "bytes", len(o.changes), "max_record", limits.MaxRecord, "err", err)
				continue
			}
		}
		for i, part := range parts {
			// Pieces of one record go in successive pushes, each building
			// on the one before.
			if len(batch) == limits.MaxBatch || size+len(part.changes) > budget || i > 0 {
				if err := flush(); err != nil {
					return err
				}
			}
			if i > 0 && slices.ContainsFunc(s.cs.Failed, func(f FailedRecord) bool { return f.ID == id }) {
				break // the relay refused an earlier piece
			}
			batch = append(batch, part)
			size += len(part.changes)
		}
	}
	return flush()
}

// pieces cuts o's changes, at change boundaries and in their causal
// order, into parts of at most max bytes, each with the heads the record
// has once it and the parts before it are applied. A single change larger
// than max is an error.
func pieces(o outgoing, max int) ([]outgoing, error) {
	heads := map[crdt.Hash]bool{}
	for _, h := range o.base {
		heads[h] = true
	}
	var out []outgoing
	start := 0
	for off := 0; off < len(o.changes); {
		n, err := chunkLen(o.changes[off:])
		if err != nil {
			return nil, err
		}
		if n > max {
			return nil, fmt.Errorf("one change of %d bytes", n)
		}
		if off+n-start > max {
			out = append(out, piece(o, o.changes[start:off], heads))
			start = off
		}
		infos, err := crdt.ParseChanges(o.changes[off : off+n])
		if err != nil {
			return nil, err
		}
		for _, c := range infos {
			for _, d := range c.Deps {
				delete(heads, d)
			}
			heads[c.Hash] = true
		}
		off += n
	}
	last := o
	last.changes = o.changes[start:]
	return append(out, last), nil
}

func piece(o outgoing, changes []byte, heads map[crdt.Hash]bool) outgoing {
	p := outgoing{id: o.id, changes: changes, known: o.known, partial: true}
	for h := range heads {
		p.heads = append(p.heads, h)
	}
	return p
}

// chunkLen returns the length of the Automerge chunk b starts with: magic
// and checksum (8 bytes), type, uLEB128 payload length, payload.
func chunkLen(b []byte) (int, error) {
	if len(b) < 10 {
		return 0, errors.New("truncated chunk")
	}
	n, ln := binary.Uvarint(b[9:])
	if ln <= 0 || n > uint64(len(b)-9-ln) {
		return 0, errors.New("bad chunk length")
	}
	return 9 + ln + int(n), nil
}

// pushAttempts bounds how often one batch is pushed while the relay
// answers conflict.
const pushAttempts = 3

// While the relay answers rate_limited (the app's push rate quota), one
// batch is pushed again after the retry_ms it asks for, at most
// rateLimitWaits times, and only for a wait up to maxRateLimitWait; past
// that the sync fails with rate_limited, and the next one tries again.
const (
	rateLimitWaits   = 5
	maxRateLimitWait = 30 * time.Second
)

// rateLimited returns how long the relay asks to wait if err is
// rate_limited (a second if it does not say), and whether to wait.
func rateLimited(err error) (time.Duration, bool) {
	var perr *transport.Error
	if !errors.As(err, &perr) || perr.Code != transport.CodeRateLimited {
		return 0, false
	}
	wait := time.Duration(perr.RetryMS) * time.Millisecond
	if wait == 0 {
		wait = time.Second
	}
	return wait, wait <= maxRateLimitWait
}

// pushBatch pushes one batch. If the relay refuses it as invalid or too
// large, the records are pushed one by one, so one bad record does not hold
// back the rest; the bad ones are listed as failed. A batch the relay
// answers with conflict is pushed again, up to pushAttempts times, and one
// it answers with rate_limited is pushed again after the wait it asks for
// (see rateLimitWaits).
func (s *collSync) pushBatch(ctx context.Context, batch []outgoing) (int, error) {
	req := &transport.Push{Collection: s.coll, Fence: s.lease.fenceOrZero()}
	for _, o := range batch {
		req.Records = append(req.Records, transport.RecordChanges{Record: o.id, Data: o.changes, Heads: o.heads.Slices()})
	}
	var ack transport.Ack
	err := s.conn.call(ctx, req, &ack)
	for try, waits := 1, 0; ; {
		// Nothing was stored either way, so pushing again is safe.
		if errors.Is(err, transport.ErrConflict) && try < pushAttempts {
			// The relay merged the push again and again while another
			// writer (a relay process sharing its store) kept changing the
			// records.
			try++
			s.r.log.Debug("relay reported a conflict; pushing again", "collection", s.coll, "records", len(batch), "attempt", try)
		} else if wait, ok := rateLimited(err); ok && waits < rateLimitWaits {
			waits++
			s.r.log.Debug("relay rate-limits the app's pushes; waiting", "collection", s.coll, "wait", wait, "wait_number", waits)
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return 0, ctx.Err()
			}
		} else {
			break
		}
		err = s.conn.call(ctx, req, &ack)
	}
	var perr *transport.Error
	if errors.As(err, &perr) && (perr.Code == transport.CodeInvalidChange || perr.Code == transport.CodeTooLarge) {
		if len(batch) == 1 {
			s.cs.Failed = append(s.cs.Failed, failedRecord(batch[0].id, fmt.Errorf("ferry: the relay refused the changes of %s/%s: %w", s.coll, batch[0].id, err)))
			// too_large: the record's document would pass the relay's
			// max_record. It stays pending (and failed) until an edit
			// makes it smaller or the relay's limit grows.
			s.r.log.Warn("relay refused a record's changes", "collection", s.coll, "record", batch[0].id, "code", perr.Code, "err", err)
			return 0, nil
		}
		n := 0
		for _, o := range batch {
			k, err := s.pushBatch(ctx, []outgoing{o})
			n += k
			if err != nil {
				return n, err
			}
		}
		return n, nil
	}
	if err != nil {
		return 0, fmt.Errorf("ferry: push %s: %w", s.coll, err)
	}
	// The relay holds at least what was pushed; its own heads may name
	// changes this device has not pulled yet, so they are not used.
	if err := s.r.acknowledge(s.coll, batch, s.lease != nil); err != nil {
		return 0, err
	}
	n := 0
	for _, o := range batch {
		if o.partial {
			continue // the record's last piece counts it
		}
		n++
		a := applied{changed: true, ev: Event{Kind: Updated}}
		switch {
		case o.deleted && !o.known:
			continue // created and deleted before the relay ever saw it
		case o.deleted:
			a.ev.Kind = Deleted
		case !o.known:
			a.ev.Kind = Created
		}
		s.count(ToRelay, a)
	}
	return n, nil
}

// outgoing reads what a pending record has to push.
func (r *Replica) outgoing(coll, id string) (outgoing, error) {
	o := outgoing{id: id}
	c := &Collection{r: r, name: coll}
	err := c.read(id, func(d *crdt.Doc, m meta) error {
		var acked crdt.Heads
		if err := r.db.View(func(txn *badger.Txn) (err error) {
			acked, err = readAcked(txn, coll, id)
			return err
		}); err != nil {
			return err
		}
		changes, err := d.ChangesSince(acked)
		o.base = acked
		if errors.Is(err, crdt.ErrUnknownHeads) {
			changes, err = d.ChangesSince(nil)
			o.base = nil
		}
		o.changes, o.heads, o.known, o.deleted = changes, m.heads, len(acked) > 0, m.deleted
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return o, nil // pending marker of a record purged meanwhile
	}
	return o, err
}

// acknowledge records, in one transaction, that the relay holds each
// record up to the heads pushed; a record stays pending if it changed
// since. leased says the push held the lease, so any conflict resolution
// it carried is pushed as it must be.
func (r *Replica) acknowledge(coll string, batch []outgoing, leased bool) error {
	ids := make([]string, len(batch))
	for i, o := range batch {
		ids[i] = o.id
	}
	_, err := r.batchOp(coll, ids, func(i int, txn *badger.Txn, t *touched) (bool, error) {
		return t.existed, ackRecord(txn, t.coll, t.id, t.doc, batch[i].heads, leased)
	})
	return err
}

// ackRecord stores heads as what the relay holds of a record, and clears
// its pending marker if it has nothing beyond them.
func ackRecord(txn *badger.Txn, coll, id string, d *crdt.Doc, heads crdt.Heads, leased bool) error {
	if err := txn.Set(recKey('a', coll, id), heads.Bytes()); err != nil {
		return err
	}
	if leased {
		if err := deleteIfPresent(txn, recKey('l', coll, id)); err != nil {
			return err
		}
	}
	// The heads pushed are the document's as it was then: if it still
	// has them, nothing is left to push.
	if d.Heads().Equal(heads) {
		return clearPending(txn, coll, id)
	}
	return nil
}
