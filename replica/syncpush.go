package replica

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// push sends the changes of the pending records among ids (nil: every
// pending record) since the heads the relay holds, in batches within the
// relay's limits, with the lease's fence, and records what the relay
// acknowledged. Records whose merge hook failed stay back until it
// succeeds, and records holding a conflict resolution stay back unless the
// sync holds the lease (see merge.go). A sync pushes every pending record;
// a live session, the ones just edited.
func (s *collSync) push(ctx context.Context, ids []string) error {
	ids, err := s.r.pendingAmong(s.coll, ids)
	if err != nil {
		return err
	}
	held, err := s.heldBack(ids)
	if err != nil {
		return err
	}
	b := s.newPushBatches(len(ids))
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		if held[id] {
			b.total--
			continue
		}
		parts, nothing, err := s.parts(id, b.maxData, b.limits.MaxRecord)
		if err != nil {
			return err
		}
		if nothing {
			b.total--
		}
		if err := b.add(ctx, id, parts); err != nil {
			b.drop()
			return err
		}
	}
	if err := b.flush(ctx); err != nil {
		b.drop()
		return err
	}
	return b.drain(ctx)
}

// heldBack returns the records a push leaves out: those whose merge hook
// failed (quarantined) and, without the lease, those among ids holding a
// conflict resolution, which it notes in heldResolutions.
func (s *collSync) heldBack(ids []string) (map[string]bool, error) {
	held, err := s.r.idSet('q', s.coll)
	if err != nil {
		return nil, err
	}
	if s.lease == nil {
		resolved, err := s.r.idSet('l', s.coll)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			if resolved[id] {
				held[id] = true
				s.heldResolutions = true
			}
		}
	}
	return held, nil
}

// parts returns what the record has to push, cut into pieces of up to
// maxData bytes if its changes are larger; nothing says it has none. A
// record that is damaged, or whose changes cannot be cut to fit the
// relay's maxRecord, is listed as failed and gives no parts: the others
// are pushed.
func (s *collSync) parts(id string, maxData, maxRecord int) (parts []outgoing, nothing bool, err error) {
	o, err := s.r.outgoing(s.coll, id)
	if errors.Is(err, ErrCorrupt) {
		s.cs.Failed = append(s.cs.Failed, failedRecord(id, err))
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if o.changes == nil {
		return nil, true, nil
	}
	if len(o.changes) <= maxData {
		return []outgoing{o}, false, nil
	}
	// A record's history can pass max_record while its document, which
	// max_record bounds, does not: push it in pieces.
	if parts, err = pieces(o, maxData); err != nil {
		err = fmt.Errorf("%w: %s/%s has %d bytes of changes to push, which do not fit the relay's max_record %d: %w", ErrTooLarge, s.coll, id, len(o.changes), maxRecord, err)
		s.cs.Failed = append(s.cs.Failed, failedRecord(id, err))
		s.r.log.Warn("record's changes cannot be pushed within the relay's max_record", "collection", s.coll, "record", id, "bytes", len(o.changes), "max_record", maxRecord, "err", err)
		return nil, false, nil
	}
	return parts, false, nil
}

// pushBatches gathers records' changes into pushes within the relay's
// limits (records per push, bytes per frame), and reports progress as
// each push is acknowledged.
//
// Pushes are pipelined: up to syncPushWindow are sent before the oldest
// one's answer is taken, so the relay checks and stores one push while
// the device reads the next records and the last push's answer is on its
// way back. A relay answers and applies a connection's pushes in the
// order sent (docs/protocol.md), and the answers are taken in that order,
// on the sync's goroutine, so acknowledgements are recorded as they were
// before. Pushes in flight hold distinct records, except a record's
// pieces, which wait for every push before them (add).
type pushBatches struct {
	s       *collSync
	limits  transport.Limits
	budget  int // bytes of changes one push may carry
	maxData int // bytes of changes one record may carry in a push
	batch   []outgoing
	size    int
	done    int
	total   int
	sent    int            // pushes sent
	flight  []inFlightPush // sent, oldest first
}

// maxRecords is how many records the next push may carry: the relay's
// max_batch, but fewer for a sync's first pushes (firstPushRecords,
// doubling with each), so that the relay checks the first while the
// device reads the records of the next, rather than waiting for a whole
// batch to be read.
func (b *pushBatches) maxRecords() int {
	return min(b.limits.MaxBatch, firstPushRecords<<min(b.sent, 16))
}

// firstPushRecords is the records of a sync's first push at most.
const firstPushRecords = 32

// inFlightPush is a push sent and not yet answered.
type inFlightPush struct {
	batch []outgoing
	pend  *transport.Pending
	err   error // the push could not be sent
}

// syncPushWindow bounds a sync's pushes in flight. A few are enough to
// keep the relay busy while the device reads the next records; more
// would only hold more of the relay's memory. Tests that cut a sync off
// between two pushes set it to 1.
var syncPushWindow = 4

func (s *collSync) newPushBatches(total int) *pushBatches {
	limits := s.conn.welcome.Limits.WithDefaults()
	budget := limits.MaxFrame - transport.FrameOverhead
	return &pushBatches{s: s, limits: limits, budget: budget, maxData: min(limits.MaxRecord, budget), total: total}
}

// add queues a record's parts, pushing what is queued first when a part
// would not fit. Pieces of one record go in successive pushes, each
// building on the one before: each waits for the answers to every push
// before it, and once the relay refuses one, the rest stay back.
func (b *pushBatches) add(ctx context.Context, id string, parts []outgoing) error {
	for i, part := range parts {
		if len(b.batch) >= b.maxRecords() || b.size+len(part.changes) > b.budget || i > 0 {
			if err := b.flush(ctx); err != nil {
				return err
			}
		}
		if i > 0 {
			if err := b.drain(ctx); err != nil {
				return err
			}
			if slices.ContainsFunc(b.s.cs.Failed, func(f FailedRecord) bool { return f.ID == id }) {
				break // the relay refused an earlier piece
			}
		}
		b.batch = append(b.batch, part)
		b.size += len(part.changes)
	}
	return nil
}

// flush sends what is queued, taking the oldest push's answer first if
// syncPushWindow pushes are in flight.
func (b *pushBatches) flush(ctx context.Context) error {
	if len(b.batch) == 0 {
		return nil
	}
	if len(b.flight) >= syncPushWindow {
		if err := b.settleOldest(ctx); err != nil {
			return err
		}
	}
	batch := b.batch
	b.batch, b.size = nil, 0
	b.sent++
	req := b.s.pushRequest(batch)
	var p inFlightPush
	p.batch = batch
	if f := b.s.r.pushFault; f != nil {
		p.err = f(req)
	}
	if p.err == nil {
		p.pend, p.err = b.s.conn.client.Start(ctx, req)
	}
	b.flight = append(b.flight, p)
	return nil
}

// drain takes the answers to every push in flight.
func (b *pushBatches) drain(ctx context.Context) error {
	for len(b.flight) > 0 {
		if err := b.settleOldest(ctx); err != nil {
			return err
		}
	}
	return nil
}

// drop forgets the pushes in flight, when the sync fails: their records
// stay pending, and a later push sends what the relay did not take again.
func (b *pushBatches) drop() {
	for _, p := range b.flight {
		if p.pend != nil {
			p.pend.Drop()
		}
	}
	b.flight = nil
}

// settleOldest takes the answer to the oldest push in flight and records
// what the relay acknowledged, then checks that the lease still holds. A
// push the relay refused is handled as pushBatch handles one.
func (b *pushBatches) settleOldest(ctx context.Context) error {
	p := b.flight[0]
	b.flight = b.flight[1:]
	s := b.s
	err := p.err
	var ack transport.Ack
	if err == nil {
		wctx, cancel := context.WithTimeout(ctx, s.p.timeout())
		err = p.pend.Wait(wctx, &ack)
		cancel()
	}
	var n int
	var perr *transport.Error
	switch {
	case err == nil:
		s.ownEntries(&ack)
		n, err = s.acknowledged(p.batch)
	case errors.As(err, &perr) && (perr.Code == transport.CodeBusy || perr.Code == transport.CodeTokenExpired):
		// Not taken: sent again the way any push is, which waits while
		// the relay is busy and renews the token.
		n, err = s.pushBatch(ctx, p.batch)
	case errors.As(err, &perr):
		n, err = s.pushBatchAnswered(ctx, p.batch, err)
	default:
		err = fmt.Errorf("ferry: push %s: %w", s.coll, err)
	}
	b.done += n
	s.progress(ToRelay, b.total, b.done)
	if err != nil {
		return err
	}
	return s.lease.keep(ctx)
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
	return s.pushBatchAnswered(ctx, batch, nil)
}

// pushBatchAnswered is pushBatch for a batch whose first push the relay
// answered with refused (a pipelined push's answer), or, with refused
// nil, not yet sent.
func (s *collSync) pushBatchAnswered(ctx context.Context, batch []outgoing, refused error) (int, error) {
	req := s.pushRequest(batch)
	var ack transport.Ack
	send := func() error {
		if f := s.r.pushFault; f != nil {
			if err := f(req); err != nil {
				return err
			}
		}
		return s.conn.call(ctx, req, &ack)
	}
	err := refused
	if err == nil {
		err = send()
	}
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
		err = send()
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
	s.ownEntries(&ack)
	return s.acknowledged(batch)
}

// ownEntries moves the sync's cursor past the log entries a push stored
// (ack.From to ack.Seq) when they directly follow it: they hold only
// changes this device pushed, so its next pull need not bring them back.
// Entries of other devices between the cursor and them keep it where it
// is, for the next pull to bring. A relay answers a connection's pushes
// in the order sent, so the pushes of one sync, taken in that order,
// move it along as long as nothing comes between them.
func (s *collSync) ownEntries(ack *transport.Ack) {
	if !s.pulled || ack.From == 0 || ack.From != s.state.Cursor+1 || ack.Seq < ack.From {
		return
	}
	s.state.Cursor, s.ownMoved = ack.Seq, true
}

// pushRequest is the push of batch, under the lease's fence if the sync
// holds the lease.
func (s *collSync) pushRequest(batch []outgoing) *transport.Push {
	req := &transport.Push{Collection: s.coll, Fence: s.lease.fenceOrZero()}
	for _, o := range batch {
		req.Records = append(req.Records, transport.RecordChanges{Record: o.id, Data: o.changes, Heads: o.heads.Slices()})
	}
	return req
}

// acknowledged records that the relay acknowledged batch, and counts the
// records pushed.
func (s *collSync) acknowledged(batch []outgoing) (int, error) {
	// The relay holds at least what was pushed; its own heads may name
	// changes this device has not pulled yet, so they are not used.
	record := s.r.acknowledge
	if s.ack != nil {
		record = s.ack
	}
	if err := record(s.coll, batch, s.lease != nil); err != nil {
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
