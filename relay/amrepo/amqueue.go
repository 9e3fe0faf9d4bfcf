package amrepo

import (
	"context"
	"sync"
)

// A connection's sync messages wait in their document's queue while the
// document's handler is busy, typically waiting for an earlier message's
// changes to be durable. What they hold is bounded per connection: each
// message counts, from when it is read until it is answered, its bytes
// plus, if it carries changes, max_inflated (what framing its changes may
// inflate to while it is handled). Past MaxQueuedBytes the connection is
// not read until answers free room: TCP holds the client back, and
// automerge-repo's clients simply wait (a browser's WebSocket buffers
// what it sends). Nothing is refused or dropped.

// amQueued is one sync or request message in a document's queue.
type amQueued struct {
	m    *amMessage
	sm   *syncMessage // m.Data, parsed
	cost int64        // what it counts for in the connection's budget
	// release gives cost back to the relay's memory budget, where the
	// message counts too (see relay.Backend.ChargeMemory).
	release func()
}

// queueCost is what a message counts for in the connection's budget.
func (c *amConn) queueCost(m *amMessage, sm *syncMessage) int64 {
	n := int64(len(m.Data))
	if len(sm.changes) > 0 {
		n += int64(c.a.limits.MaxInflated)
	}
	return n
}

// queueBudget bounds the bytes a connection's queued messages count for.
// Safe for concurrent use: the read loop takes, handlers give back.
type queueBudget struct {
	max int64

	mu    sync.Mutex
	used  int64
	peak  int64         // the most used has been (for tests)
	freed chan struct{} // closed at the next release, if someone waits
}

// take counts n bytes in, waiting while they do not fit. A message
// larger than the whole budget counts as the whole budget: it is taken
// alone. paused is called once if take has to wait.
func (b *queueBudget) take(ctx context.Context, n int64, paused func(used int64)) error {
	n = min(n, b.max)
	for called := false; ; called = true {
		b.mu.Lock()
		if b.used+n <= b.max {
			b.used += n
			b.peak = max(b.peak, b.used)
			b.mu.Unlock()
			return nil
		}
		if b.freed == nil {
			b.freed = make(chan struct{})
		}
		freed, used := b.freed, b.used
		b.mu.Unlock()
		if !called {
			paused(used)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-freed:
		}
	}
}

// give counts n bytes (as given to take) out.
func (b *queueBudget) give(n int64) {
	n = min(n, b.max)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.freed != nil {
		close(b.freed)
		b.freed = nil
	}
}

// usage returns the bytes counted in now, and the most ever.
func (b *queueBudget) usage() (used, peak int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used, b.peak
}

// enqueue queues a sync message for its document, once the connection's
// budget has room for it, and starts the document's handler if none
// runs. It blocks while the budget is full or InFlight documents are
// being handled: the connection is not read meanwhile. false if the
// connection ended while it waited.
func (c *amConn) enqueue(d *amDoc, q *amQueued) bool {
	if !c.pause(func(ctx context.Context) error { return c.budget.take(ctx, q.cost, c.pausedHook) }) {
		return false
	}
	c.a.metrics.queuedBytes.Add(float64(q.cost))
	q.release = c.a.b.ChargeMemory(q.cost)
	d.qmu.Lock()
	if d.dead {
		d.qmu.Unlock()
		c.dequeued(q)
		return true // the connection is ending
	}
	d.queue = append(d.queue, q)
	start := !d.running
	d.running = true
	d.qmu.Unlock()
	if !start {
		return true
	}
	if !c.pause(func(ctx context.Context) error {
		select {
		case c.sem <- struct{}{}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}) {
		c.kill(d)
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() { <-c.sem }()
		for {
			d.qmu.Lock()
			if len(d.queue) == 0 {
				d.running = false
				d.qmu.Unlock()
				return
			}
			q := d.queue[0]
			d.queue[0] = nil
			d.queue = d.queue[1:]
			d.qmu.Unlock()
			err := c.ctx.Err()
			if err == nil {
				err = c.handleSync(d, q)
			}
			c.dequeued(q)
			if err != nil {
				c.fail(err)
				c.kill(d)
				return
			}
		}
	}()
	return true
}

// dequeued gives back what a handled (or dropped) message counted for.
func (c *amConn) dequeued(q *amQueued) {
	c.budget.give(q.cost)
	c.a.metrics.queuedBytes.Sub(float64(q.cost))
	q.release()
}

// kill ends a document's handling on a connection that is ending: what
// is queued is dropped, and what comes later is dropped on arrival.
func (c *amConn) kill(d *amDoc) {
	d.qmu.Lock()
	queue := d.queue
	d.queue, d.dead = nil, true
	d.qmu.Unlock()
	for _, q := range queue {
		c.dequeued(q)
	}
}

// pause runs wait, a wait of the read loop on the relay's own work,
// noting meanwhile that the connection is not read: keepalive then does
// not take an unanswered ping for a dead peer (the pong waits unread).
// false if the connection ended.
func (c *amConn) pause(wait func(ctx context.Context) error) bool {
	c.pauses.Add(1)
	c.paused.Store(true)
	err := wait(c.ctx)
	c.paused.Store(false)
	return err == nil
}

// pausedHook notes that the read loop waits for room in the budget.
func (c *amConn) pausedHook(used int64) {
	c.a.metrics.backpressure.Inc()
	if h := c.a.hooks.paused; h != nil {
		h(c, used)
	}
}
