package amrepo

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/ferrysync/ferry/transport"
	"golang.org/x/time/rate"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// amConn is one automerge-repo peer. Its read loop decodes messages and
// hands each document's to that document's queue, handled in order by
// one goroutine at a time (up to InFlight documents at once), so the
// pushes of many documents share durable writes. A live goroutine sends
// each open document's changes made by others.
type amConn struct {
	a        *Endpoint
	ws       *websocket.Conn
	coll     relay.Coll
	claims   *relay.Claims
	peer     string // the client's peer ID
	announce bool

	ctx     context.Context // ends when the connection ends
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	sem     chan struct{} // one token per document being handled
	limiter *rate.Limiter // messages read: past it, the connection is read more slowly
	pres    *amPresence
	budget  *queueBudget // what queued messages hold (see amqueue.go)
	waiting atomic.Int64 // bytes of changes waiting for their dependencies, all documents
	held    atomic.Int64 // what the documents' sync states keep of the peer's messages
	// The read loop waits on the relay (paused), and has done so pauses
	// times: keepalive's pings go unanswered meanwhile.
	paused atomic.Bool
	pauses atomic.Uint64

	mu      sync.Mutex
	docs    map[string]*amDoc // by record
	stopped bool
	closed  chan struct{} // closed once a stop's close handshake ends
}

func (c *amConn) run(refusal string) {
	a := c.a
	defer func() {
		c.mu.Lock()
		stopped := c.stopped
		c.mu.Unlock()
		if stopped {
			<-c.closed // the close handshake, bounded by the library
		}
		c.cancel()
		c.wg.Wait()
		c.mu.Lock()
		records := make([]string, 0, len(c.docs))
		for r := range c.docs {
			records = append(records, r)
		}
		c.mu.Unlock()
		a.metrics.openDocs.Sub(float64(len(records)))
		a.unregister(c, records)
		c.ws.CloseNow()
	}()
	if !a.register(c) {
		c.ws.Close(websocket.StatusGoingAway, "relay is shutting down")
		return
	}
	if !c.join(refusal) {
		return
	}
	leavePresence := a.b.JoinPresence(c.coll, c)
	defer func() {
		leavePresence()
		c.presenceGone()
	}()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.sendPresence()
	}()
	if c.a.ping > 0 {
		c.wg.Add(1)
		go c.keepalive()
	}
	cursor, err := a.b.Head(c.ctx, c.coll)
	if err != nil {
		c.fail(err)
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.live(cursor, c.announce)
	}()
	for {
		if err := c.limiter.Wait(c.ctx); err != nil {
			return
		}
		typ, b, err := c.ws.Read(c.ctx)
		if err != nil {
			if s := websocket.CloseStatus(err); s == -1 && c.ctx.Err() == nil && !errors.Is(err, context.Canceled) {
				a.log.Debug("automerge-repo read failed", "app", c.coll.Tenant, "peer", c.peer, "err", err)
				if errors.Is(err, websocket.ErrMessageTooBig) || strings.Contains(err.Error(), "read limited") {
					a.metrics.refused.WithLabelValues("too_large").Inc()
				}
			}
			return
		}
		a.metrics.bytesIn.Add(float64(len(b)))
		if h := a.hooks.read; h != nil {
			h(c, len(b))
		}
		if typ != websocket.MessageBinary {
			c.end("messages must be binary CBOR")
			return
		}
		m, err := decodeAMMessage(b)
		if err != nil {
			a.metrics.messages.WithLabelValues("malformed", "in").Inc()
			c.end(err.Error())
			return
		}
		a.metrics.messages.WithLabelValues(amTypeLabel(m.Type), "in").Inc()
		if !c.dispatch(m) {
			return
		}
	}
}

// join waits for the client's join and answers it with peer, or with
// error when refusal is set or the join is wrong.
func (c *amConn) join(refusal string) bool {
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	typ, b, err := c.ws.Read(ctx)
	cancel()
	if err != nil {
		return false
	}
	if typ != websocket.MessageBinary {
		c.end("messages must be binary CBOR")
		return false
	}
	m, err := decodeAMMessage(b)
	if err != nil {
		c.end(err.Error())
		return false
	}
	if m.Type != amJoin || m.SenderID == "" {
		c.end("the first message must be join, with a senderId")
		return false
	}
	c.peer = m.SenderID
	if refusal != "" {
		c.end(refusal)
		return false
	}
	if len(m.SupportedProtocolVersions) > 0 && !slices.Contains(m.SupportedProtocolVersions, amProtocolV1) {
		c.end("unsupported protocol version")
		return false
	}
	return c.send(&amMessage{
		Type:                    amPeer,
		SenderID:                c.self(),
		TargetID:                c.peer,
		SelectedProtocolVersion: amProtocolV1,
		// A storage ID lets clients keep their sync state with the relay
		// across reconnects; it changes when the store is restored.
		PeerMetadata: &amPeerMetadata{StorageID: "ferry-" + c.a.b.Incarnation(), IsEphemeral: false},
	})
}

// self is the relay's peer ID on this connection: the relay's ID and the
// collection ("ferry-relay/todos"). automerge-repo keeps one adapter per
// peer ID, so a Repo with adapters for several collections must see a
// different peer on each, or it sends every document to the first; and
// an app's share policy can tell the collections apart by the part after
// the last "/" (collection names have no "/"). Before the collection is
// known (a refused join), it is the relay's ID alone.
func (c *amConn) self() string {
	if c.coll.Collection == "" {
		return c.a.peerID
	}
	return c.a.peerID + "/" + c.coll.Collection
}

// expired ends the connection if its token no longer holds (expired, or
// its key removed) by the relay's clock: the peer must reconnect with a
// fresh one.
func (c *amConn) expired() bool {
	err := c.a.b.CheckToken(c.claims)
	if err == nil {
		return false
	}
	var te *relay.TokenError
	if errors.As(err, &te) {
		err = te.Err
	}
	c.end(fmt.Sprintf("%v; reconnect with a fresh one", err))
	return true
}

// dispatch handles one message after join; false ends the connection.
func (c *amConn) dispatch(m *amMessage) bool {
	if m.Type == amEphemeral && m.SenderID != c.peer {
		// automerge-repo passes on the ephemeral messages it receives to
		// its other peers, the relay included. The relay sent the
		// original to everyone already: drop the copy (and so never let
		// a client speak for another peer).
		return true
	}
	if m.SenderID != c.peer {
		c.end(fmt.Sprintf("message from %q on the connection of %q", m.SenderID, c.peer))
		return false
	}
	if c.expired() {
		return false
	}
	switch m.Type {
	case amRequest, amSync:
		record, err := recordForDocumentID(m.DocumentID)
		if err != nil {
			c.end(err.Error())
			return false
		}
		sm, err := parseSyncMessage(m.Data)
		if err != nil {
			c.end(fmt.Sprintf("document %s: %v", m.DocumentID, err))
			return false
		}
		d, err := c.open(record, m.DocumentID)
		if err != nil {
			c.end(err.Error())
			return false
		}
		return c.enqueue(d, &amQueued{m: m, sm: sm, cost: c.queueCost(m, sm)})
	case amEphemeral:
		c.ephemeral(m)
	case amUnavailable, amSubscription, amHeadsChanged:
		// The relay keeps no remote-heads subscriptions and needs no
		// availability hints: a document it does not hold stays
		// unavailable until someone writes it.
	case amJoin:
		c.end("join sent twice")
		return false
	default:
		// Newer clients may send types this relay does not know; ignore.
	}
	return true
}

// open returns the connection's state of a document, opening it.
func (c *amConn) open(record, id string) (*amDoc, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.docs[record]; d != nil {
		return d, nil
	}
	if len(c.docs) >= c.a.opts.MaxDocs {
		c.a.metrics.refused.WithLabelValues("max_docs").Inc()
		return nil, fmt.Errorf("a connection may sync at most %d documents", c.a.opts.MaxDocs)
	}
	d := &amDoc{record: record, id: id, state: crdt.NewSyncState()}
	c.docs[record] = d
	c.a.metrics.openDocs.Inc()
	c.a.opened(c, record)
	return d, nil
}

func (c *amConn) lookup(record string) *amDoc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.docs[record]
}

// ephemeral passes an ephemeral message on to the document's other peers,
// with its original sender, session and count.
func (c *amConn) ephemeral(m *amMessage) {
	record, err := recordForDocumentID(m.DocumentID)
	if err != nil {
		return
	}
	for _, o := range c.a.peersOf(c, record) {
		fwd := *m
		fwd.TargetID = o.peer
		o.send(&fwd)
	}
	c.ephemeralToDevices(record, m)
}

// send writes a message; false if the connection is gone.
func (c *amConn) send(m *amMessage) bool {
	return c.sendOK(m) == nil
}

func (c *amConn) sendOK(m *amMessage) error {
	b, err := encodeAMMessage(m)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.a.slow)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageBinary, b); err != nil {
		c.cancel()
		return fmt.Errorf("%w: %v", errAMGone, err)
	}
	c.a.metrics.messages.WithLabelValues(amTypeLabel(m.Type), "out").Inc()
	c.a.metrics.bytesOut.Add(float64(len(b)))
	return nil
}

var errAMGone = errors.New("automerge-repo peer gone")

// amRefusal is a peer's fault: it is told why, and disconnected.
type amRefusal struct{ msg string }

func (e *amRefusal) Error() string { return e.msg }

// fail ends the connection for err: the peer's fault (amRefusal) is
// explained to it; a relay too busy for too long (amBusy) closes with
// Try Again Later, and one refused because the relay is stopping closes
// with Going Away, for the peer to reconnect; the relay's own failure is
// logged and reported as internal.
func (c *amConn) fail(err error) {
	var r *amRefusal
	var busy *amBusy
	switch {
	case errors.As(err, &r):
		c.end(r.msg)
	case errors.As(err, &busy):
		c.a.metrics.refused.WithLabelValues("busy").Inc()
		c.a.log.Info("automerge-repo connection closed: the relay stayed busy", "app", c.coll.Tenant, "collection", c.coll.Collection, "peer", c.peer, "waited", c.a.opts.MaxBusyWait)
		c.stop(websocket.StatusTryAgainLater, busyReason)
	case errors.Is(err, transport.ErrShuttingDown):
		c.stop(websocket.StatusGoingAway, "relay is shutting down")
	case errors.Is(err, errAMGone), c.ctx.Err() != nil:
		c.cancel()
	default:
		c.a.log.Error("automerge-repo connection failed", "app", c.coll.Tenant, "collection", c.coll.Collection, "peer", c.peer, "err", err)
		c.stop(websocket.StatusInternalError, "internal error")
	}
}

// end tells the peer why it is disconnected, then closes.
func (c *amConn) end(reason string) {
	c.send(&amMessage{Type: amError, SenderID: c.self(), TargetID: c.peer, Message: reason})
	c.stop(websocket.StatusPolicyViolation, reason)
}

// stop closes the connection with a status, once.
func (c *amConn) stop(code websocket.StatusCode, reason string) {
	c.mu.Lock()
	done := c.stopped
	c.stopped = true
	c.mu.Unlock()
	if done {
		return
	}
	if len(reason) > 120 {
		reason = reason[:120]
	}
	// Not canceling first: that would drop the connection before the
	// close frame (and the error message before it) reached the peer.
	go func() {
		c.ws.Close(code, reason)
		c.cancel()
		close(c.closed)
	}()
}

func (c *amConn) keepalive() {
	defer c.wg.Done()
	t := time.NewTicker(c.a.ping)
	defer t.Stop()
	tick := t.C
	if c.a.hooks.tick != nil {
		tick = c.a.hooks.tick
	}
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-tick:
		}
		if c.paused.Load() {
			if h := c.a.hooks.skipped; h != nil {
				h()
			}
			continue // the peer waits on the relay, not the reverse
		}
		pauses := c.pauses.Load()
		ctx, cancel := context.WithTimeout(c.ctx, 2*c.a.ping)
		err := c.ws.Ping(ctx)
		cancel()
		if err != nil && c.ctx.Err() == nil && (c.paused.Load() || c.pauses.Load() != pauses) {
			continue // the pong may wait unread
		}
		if err != nil {
			c.cancel()
			return
		}
	}
}

func amTypeLabel(t string) string {
	switch t {
	case amJoin, amPeer, amError, amRequest, amSync, amUnavailable, amEphemeral, amSubscription, amHeadsChanged:
		return t
	}
	return "other"
}
