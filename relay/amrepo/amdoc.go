package amrepo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// amDoc is one document a connection syncs.
type amDoc struct {
	record, id string

	mu    sync.Mutex // held while the sync state is used
	state *crdt.SyncState
	sent  crdt.Heads // the document's heads when a message was last generated
	// Changes waiting for changes they depend on, and those (see
	// ampending.go).
	pending [][]byte
	missing []crdt.Hash
	// held is what the sync state keeps of the peer's last message (its
	// heads, needs and bloom filters), counted in the connection's.
	held int64

	qmu     sync.Mutex
	queue   []*amQueued // see amqueue.go
	running bool        // a handler takes the queue
	dead    bool        // the connection is ending: drop what comes
}

// handleSync takes in a request or sync message: its changes are pushed
// (validated and durable before anything is answered), the rest goes to
// the sync state, and the answer goes back.
func (c *amConn) handleSync(d *amDoc, q *amQueued) error {
	start := time.Now()
	defer func() { c.a.metrics.syncSeconds.Observe(time.Since(start).Seconds()) }()
	sm := q.sm
	d.mu.Lock()
	defer d.mu.Unlock()
	canWrite := c.claims.CanWrite(c.coll.Collection)
	// The sync state takes in the message against the document as it was
	// before the message's changes, as automerge does when it applies
	// them: seeing its heads already held, it would think the peer had
	// been told of them and send no acknowledgement. The document is read
	// in place, and its changes pushed once it is let go.
	var ordered [][]byte
	found := false
	err := c.withDoc(d, nil, func(doc *crdt.Doc, _ crdt.Heads, ok bool) error {
		found = ok
		if len(sm.changes) > 0 && canWrite {
			chunks := append(d.pending, sm.changes...)
			// One budget for the message, as for a push on /ws: framing
			// inflates compressed changes and a whole document's columns.
			budget := crdt.NewInflateBudget(int64(c.a.limits.MaxInflated))
			o, missing, err := pendingChanges(doc, chunks, budget)
			if errors.Is(err, crdt.ErrInflateLimit) {
				c.a.metrics.refused.WithLabelValues(string(transport.CodeTooLarge)).Inc()
				return &amRefusal{msg: fmt.Sprintf("document %s: %s: compressed changes inflate past max_inflated, %d bytes for one message", d.id, transport.CodeTooLarge, c.a.limits.MaxInflated)}
			}
			if err != nil {
				return &amRefusal{msg: fmt.Sprintf("document %s: %v", d.id, err)}
			}
			c.waiting.Add(-int64(chunksSize(d.pending)))
			d.pending, d.missing = nil, missing
			if len(missing) > 0 {
				if chunksSize(chunks) > c.a.limits.MaxRecord {
					return &amRefusal{msg: fmt.Sprintf("document %s: over %d bytes of changes wait for changes never sent", d.id, c.a.limits.MaxRecord)}
				}
				if n := c.waiting.Add(int64(chunksSize(chunks))); n > c.a.opts.MaxWaitingBytes {
					return &amRefusal{msg: fmt.Sprintf("over %d bytes of changes wait, on this connection, for changes never sent", c.a.opts.MaxWaitingBytes)}
				}
				// Pushed once what they need arrives. Copied: the message's
				// own bytes, which may be far larger, are let go.
				for i, ch := range chunks {
					chunks[i] = bytes.Clone(ch)
				}
				d.pending = chunks
			} else {
				ordered = o
			}
		}
		if !found && ordered == nil && len(sm.heads) == 0 {
			return nil // unavailable: nothing for the sync state
		}
		v1 := sm.encodeV1()
		if err := c.holdState(d, len(v1)); err != nil {
			return err
		}
		if err := d.state.Receive(doc, v1); err != nil {
			return &amRefusal{msg: fmt.Sprintf("document %s: %v", d.id, err)}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(sm.changes) > 0 && !canWrite {
		// A read-only peer's edits stay with it; it still syncs.
		c.a.metrics.refused.WithLabelValues("read_only").Inc()
		c.send(&amMessage{Type: amError, SenderID: c.self(), TargetID: c.peer,
			Message: fmt.Sprintf("token does not grant write on %q: changes to %s refused", c.coll.Collection, d.id)})
	}
	if ordered != nil {
		if err := c.push(d, ordered); err != nil {
			return err
		}
		found = true
	}
	if !found && len(sm.heads) == 0 {
		// Nobody has it: tell the peer, and keep the document open so it
		// syncs if someone writes it later.
		return c.sendOK(&amMessage{Type: amUnavailable, SenderID: c.self(), TargetID: c.peer, DocumentID: d.id})
	}
	// A peer with a document the relay lacks is answered from an empty
	// one, which asks for all of it. Heads the peer names that the relay
	// lacks, sent without their changes (the peer's sync state was still
	// waiting for an answer), are asked for: automerge's sync state may
	// have nothing to say then, and neither side would speak again.
	// (Not from a read-only peer, whose changes the relay refuses.)
	return c.syncOut(d, nil, true, func(doc *crdt.Doc) (need []crdt.Hash) {
		if canWrite {
			for _, h := range sm.heads {
				if !doc.Has(h) {
					need = append(need, h)
				}
			}
		}
		return need
	})
}

// holdState counts in the connection's sync states that the document's
// now keeps n bytes of the peer's message (automerge keeps the heads,
// needs and bloom filters of the last one), and refuses past
// MaxSyncStateBytes. d.mu is held.
func (c *amConn) holdState(d *amDoc, n int) error {
	total := c.held.Add(int64(n) - d.held)
	d.held = int64(n)
	if total > c.a.opts.MaxSyncStateBytes {
		c.a.metrics.refused.WithLabelValues(string(transport.CodeTooLarge)).Inc()
		return &amRefusal{msg: fmt.Sprintf("the sync states of this connection's documents would keep over %d bytes of its messages' heads and bloom filters", c.a.opts.MaxSyncStateBytes)}
	}
	return nil
}

// withDoc calls read with the record's document as stored (found), or an
// empty one if the store has none: the relay's cached document, read
// from the store only if it is not cached or lacks one of known (heads
// the record's log entries reached). d.mu is held; see relay.Backend's
// ReadDocument for what read may do.
func (c *amConn) withDoc(d *amDoc, known crdt.Heads, read func(doc *crdt.Doc, heads crdt.Heads, found bool) error) error {
	// A load refused with busy has not called read: retrying is safe.
	err := c.retryBusy(func() error {
		return c.a.b.ReadDocument(c.ctx, c.coll, d.record, known, func(doc *crdt.Doc, heads crdt.Heads) error {
			return read(doc, heads, true)
		})
	})
	if !isNotFound(err) {
		return err
	}
	empty, err := crdt.New("")
	if err != nil {
		return err
	}
	defer empty.Free()
	return read(empty, nil, false)
}

// push stores a message's changes through the relay's push path.
func (c *amConn) push(d *amDoc, chunks [][]byte) error {
	p := &transport.Push{Collection: c.coll.Collection, Records: []transport.RecordChanges{{
		Record: d.record, Data: bytes.Join(chunks, nil),
	}}}
	if err := c.a.limits.Validate(p); err != nil {
		return &amRefusal{msg: fmt.Sprintf("document %s: %v", d.id, err)}
	}
	// Once started, a push finishes and is durable even if the peer goes.
	// One refused with busy has stored nothing: it is tried again.
	err := c.retryBusy(func() error {
		_, err := c.a.b.Push(context.WithoutCancel(c.ctx), c.coll, p)
		return err
	})
	var busy *amBusy
	var te *transport.Error
	if errors.As(err, &busy) || errors.Is(err, transport.ErrShuttingDown) {
		return err // not the peer's fault (see fail)
	}
	if errors.As(err, &te) && te.Code != transport.CodeInternal {
		c.a.metrics.refused.WithLabelValues(string(te.Code)).Inc()
		return &amRefusal{msg: fmt.Sprintf("document %s: %s: %s", d.id, te.Code, te.Message)}
	}
	return err
}

// syncOut sends the peer what it lacks of the document as stored, if
// anything, and asks for the changes need names (with those still
// missing): the message is made from the document, and sent once it is let
// go. A record the store does not hold is answered from an empty document
// if orEmpty is set, and not at all otherwise. known is as for withDoc.
// d.mu is held.
func (c *amConn) syncOut(d *amDoc, known crdt.Heads, orEmpty bool, need func(doc *crdt.Doc) []crdt.Hash) error {
	var msg []byte
	var ok bool
	err := c.withDoc(d, known, func(doc *crdt.Doc, heads crdt.Heads, found bool) error {
		if !found && !orEmpty {
			return nil
		}
		var err error
		msg, ok, err = d.state.Generate(doc)
		d.sent = heads
		wanted := append(need(doc), d.missing...)
		if err == nil && len(wanted) > 0 {
			if !ok {
				// Nothing else to say: ask anyway.
				msg, ok = (&syncMessage{heads: heads}).encodeV1(), true
			}
			msg, err = withNeed(msg, wanted)
		}
		return err
	})
	if err != nil || !ok {
		return err
	}
	return c.sendOK(&amMessage{Type: amSync, SenderID: c.self(), TargetID: c.peer, DocumentID: d.id, Data: msg})
}
