package amrepo

import (
	"context"
	"errors"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// live sends the peer, for each open document, the changes others make
// (Ferry devices and other peers): it follows the collection's log from
// cursor. With announce, every record of the collection is opened: first
// those stored, then each new one.
func (c *amConn) live(cursor uint64, announce bool) {
	if announce && !c.announceAll() {
		return
	}
	for {
		var ok bool
		if cursor, ok = c.liveStep(cursor, announce); !ok {
			return
		}
	}
}

// liveStep sends the peer what the log holds after cursor, or waits for
// it to grow. It returns the cursor to go on from, or false when the
// connection is over.
func (c *amConn) liveStep(cursor uint64, announce bool) (uint64, bool) {
	a := c.a
	wake, done := a.b.Wait(c.coll)
	defer done()
	changed, next, err := changed(c.ctx, a.b, c.coll, cursor, 1000)
	if errors.Is(err, relay.ErrTruncated) {
		// Entries after cursor are gone (compacted away): go on from the
		// head, and send every open document what it lacks.
		if next, err = a.b.Head(c.ctx, c.coll); err == nil {
			return next, c.refreshAll(announce)
		}
	}
	if err != nil {
		c.fail(err)
		return cursor, false
	}
	if c.expired() {
		return cursor, false
	}
	for _, ch := range changed {
		d := c.lookup(ch.record)
		if d == nil {
			if announce && !c.announceRecord(ch.record) {
				return cursor, false
			}
			continue
		}
		d.mu.Lock()
		skip := d.sent.Equal(ch.heads)
		d.mu.Unlock()
		if skip {
			continue // this peer's own change, already answered
		}
		if !c.refresh(d, ch.heads) {
			return cursor, false
		}
	}
	if len(changed) > 0 {
		return next, true
	}
	select {
	case <-c.ctx.Done():
		return cursor, false
	case <-wake:
	}
	return next, true
}

// announceAll opens and sends every record of the collection.
func (c *amConn) announceAll() bool {
	after := ""
	for {
		ids, err := c.a.b.Records(c.ctx, c.coll, after, 256)
		if err != nil {
			c.fail(err)
			return false
		}
		for _, id := range ids {
			if !c.announceRecord(id) {
				return false
			}
		}
		if len(ids) < 256 {
			return true
		}
		after = ids[len(ids)-1]
	}
}

// refreshAll sends every open document what the peer lacks of it (and,
// with announce, opens records the peer has not seen).
func (c *amConn) refreshAll(announce bool) bool {
	if announce && !c.announceAll() {
		return false
	}
	c.mu.Lock()
	docs := make([]*amDoc, 0, len(c.docs))
	for _, d := range c.docs {
		docs = append(docs, d)
	}
	c.mu.Unlock()
	for _, d := range docs {
		if !c.refresh(d, nil) {
			return false
		}
	}
	return true
}

// announceRecord opens a record the peer has not asked for and sends it.
// Records whose ID is not a UUID have no document ID and are skipped.
func (c *amConn) announceRecord(record string) bool {
	id := documentIDForRecord(record)
	if id == "" || c.lookup(record) != nil {
		return true
	}
	d, err := c.open(record, id)
	if err != nil {
		c.end(err.Error() + "; connect without announce=1 and find documents instead")
		return false
	}
	return c.refresh(d, nil)
}

// refresh sends the peer the document's latest changes; known, if not
// nil, are the heads a log entry says the record reached.
func (c *amConn) refresh(d *amDoc, known crdt.Heads) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := c.syncOut(d, known, false, func(*crdt.Doc) []crdt.Hash { return nil })
	if err != nil {
		c.fail(err)
		return false
	}
	return true
}

// amChanged is one log entry, as the endpoint sees it.
type amChanged struct {
	record string
	heads  crdt.Heads
}

// changed returns which records changed in log entries after cursor (at
// most limit entries), with their heads, and the cursor to go on from. If
// entries after cursor were truncated it returns an error matching
// relay.ErrTruncated: read every record again.
func changed(ctx context.Context, b relay.Backend, c relay.Coll, after uint64, limit int) ([]amChanged, uint64, error) {
	entries, err := b.Log(ctx, c, after, limit)
	if err != nil {
		return nil, after, err
	}
	out := make([]amChanged, len(entries))
	for i, e := range entries {
		out[i] = amChanged{record: e.Record, heads: e.Heads}
		after = e.Seq
	}
	return out, after, nil
}

// isNotFound reports whether err is the store's "no such record".
func isNotFound(err error) bool { return errors.Is(err, relay.ErrNotFound) }
