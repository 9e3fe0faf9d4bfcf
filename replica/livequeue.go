package replica

import (
	"sync"

	"github.com/ferrysync/ferry/transport"
)

// While a live session pushes, or syncs a collection under its lease, it
// does not apply live messages, and the transport client cuts a reader
// that leaves its buffer full (a slow consumer). So a goroutine drains the
// client into a queue the session applies from once it is free. The queue
// is bounded: past the bound it drops what it holds and marks the
// collections those messages were for as behind; before the session
// applies anything newer to one, it syncs it (pulling from its cursor,
// which the dropped messages never moved, so nothing is skipped).

// Bounds of a live session's queue of unapplied messages. A variable so
// that tests can make the bound small.
var (
	maxLiveQueued      = 4096
	maxLiveQueuedBytes = 32 << 20
)

// liveBuffer is how many live messages the transport client of a live
// session holds before the queue's drainer takes them. A variable so that
// tests can make it small.
var liveBuffer = 1024

// liveQueue holds the live messages a session has received and not yet
// applied. Its drainer goroutine ends when the client's Live channel
// closes or close is called.
type liveQueue struct {
	ready chan struct{} // has a value when take has something
	stop  chan struct{}
	done  chan struct{}

	mu     sync.Mutex
	msgs   []*transport.Live
	bytes  int
	behind map[string]bool
	order  []string // behind's collections, in the order they fell behind
}

func newLiveQueue(c *transport.Client) *liveQueue {
	q := &liveQueue{ready: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}), behind: map[string]bool{}}
	go q.drain(c.Live())
	return q
}

func (q *liveQueue) drain(in <-chan *transport.Live) {
	defer close(q.done)
	for {
		select {
		case <-q.stop:
			return
		case lv, ok := <-in:
			if !ok {
				return // the connection ended: the session sees Done
			}
			q.add(lv)
		}
	}
}

func liveBytes(lv *transport.Live) int {
	n := 0
	for _, rc := range lv.Records {
		n += len(rc.Data)
	}
	return n
}

func (q *liveQueue) add(lv *transport.Live) {
	q.mu.Lock()
	n := liveBytes(lv)
	if len(q.msgs) >= maxLiveQueued || q.bytes+n > maxLiveQueuedBytes {
		for _, m := range q.msgs {
			q.fellBehind(m.Collection)
		}
		q.fellBehind(lv.Collection)
		q.msgs, q.bytes = nil, 0
	} else {
		q.msgs = append(q.msgs, lv)
		q.bytes += n
	}
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *liveQueue) fellBehind(coll string) {
	if !q.behind[coll] {
		q.behind[coll] = true
		q.order = append(q.order, coll)
	}
}

// take returns the collections that fell behind, to sync before anything
// else, and the queued messages, in the order they arrived, and empties
// the queue.
func (q *liveQueue) take() (behind []string, msgs []*transport.Live) {
	q.mu.Lock()
	defer q.mu.Unlock()
	behind, msgs = q.order, q.msgs
	q.order, q.msgs, q.bytes = nil, nil, 0
	clear(q.behind)
	return behind, msgs
}

// close stops the drainer and waits for it.
func (q *liveQueue) close() {
	close(q.stop)
	<-q.done
}
