package amrepo

import (
	"errors"
	"fmt"
	"time"

	"github.com/ferrysync/ferry/transport"
)

// Past the relay's memory budget (max_memory), a push or a document load
// waits for room, then is refused with busy, having done nothing.
// automerge-repo's clients know no such answer, and it is not the peer's
// fault: the handler waits and tries again, backing off, while the
// connection's queue fills and the relay stops reading it (see
// amqueue.go), so the peer is held back meanwhile. The wait is bounded
// (Options.MaxBusyWait): the connection's own queued messages count in
// the budget, so room may never come while it waits. Still busy then,
// the connection is closed with 1013 (Try Again Later); automerge-repo's
// WebSocket client reconnects and syncs again, resending what the relay
// does not have.

// Backoff between retries of busy work: from the refusal's retry_ms (at
// least minBusyBackoff), doubling, at most maxBusyBackoff.
const (
	minBusyBackoff = 100 * time.Millisecond
	maxBusyBackoff = 5 * time.Second
)

// amBusy is work the relay stayed too busy to do for MaxBusyWait: not the
// peer's fault, so no error message; the connection closes with 1013.
type amBusy struct{ err error }

func (e *amBusy) Error() string {
	return fmt.Sprintf("the relay's memory stayed in use (max_memory): %v", e.err)
}

func (e *amBusy) Unwrap() error { return e.err }

// busyReason is the close reason of a connection closed for amBusy.
const busyReason = "the relay's memory is in use (max_memory); reconnect later"

// retryBusy runs op, and again while the relay refuses it with busy, for
// up to MaxBusyWait by the relay's clock. op must do nothing when it is
// refused with busy (a push or a load refused so has done nothing). It
// returns op's last error, an *amBusy once the wait is over, or the
// connection's context's error if the connection ends meanwhile.
func (c *amConn) retryBusy(op func() error) error {
	var start time.Time
	var backoff time.Duration
	for {
		err := op()
		var te *transport.Error
		if !errors.As(err, &te) || te.Code != transport.CodeBusy {
			return err
		}
		now := c.a.b.Now()
		if start.IsZero() {
			start = now
		}
		left := c.a.opts.MaxBusyWait - now.Sub(start)
		if left <= 0 {
			return &amBusy{err: err}
		}
		backoff = min(max(2*backoff, time.Duration(te.RetryMS)*time.Millisecond, minBusyBackoff), maxBusyBackoff, left)
		c.a.metrics.busyRetries.Inc()
		wait, stop := (<-chan time.Time)(nil), func() bool { return false }
		if h := c.a.hooks.busyWait; h != nil {
			wait = h(c, backoff)
		} else {
			t := time.NewTimer(backoff)
			wait, stop = t.C, t.Stop
		}
		select {
		case <-wait:
		case <-c.ctx.Done():
			stop()
			return c.ctx.Err()
		}
	}
}
