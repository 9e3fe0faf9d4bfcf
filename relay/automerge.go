package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/lru"
	"github.com/ferrysync/ferry/transport"
)

// AutomergeOptions bound the automerge-repo endpoint (/automerge). Zero
// fields mean their defaults.
type AutomergeOptions struct {
	// MaxDocs is how many documents one connection may sync (request,
	// sync, or be announced). Default 50,000.
	MaxDocs int
	// MessageRate is the messages per second a connection may send on
	// average, and MessageBurst how many it may send at once; past them
	// the relay reads the connection more slowly (TCP pushes back).
	// Defaults 5,000 and 20,000.
	MessageRate  float64
	MessageBurst int
	// InFlight is how many of one connection's sync messages are handled
	// at once (they wait for durable storage together). Default 64.
	InFlight int
}

func (o AutomergeOptions) withDefaults() AutomergeOptions {
	if o.MaxDocs <= 0 {
		o.MaxDocs = 50_000
	}
	if o.MessageRate <= 0 {
		o.MessageRate = 5_000
	}
	if o.MessageBurst <= 0 {
		o.MessageBurst = 20_000
	}
	if o.InFlight <= 0 {
		o.InFlight = 64
	}
	return o
}

// amServer serves automerge-repo clients: each connection is a peer that
// syncs documents of one collection, each document a record.
type amServer struct {
	b       amBackend
	opts    AutomergeOptions
	limits  transport.Limits
	log     *slog.Logger
	peerID  string
	origins []string
	ping    time.Duration
	slow    time.Duration // for a client to take a message
	metrics *amMetrics
	docs    *lru.Cache[amDocKey, *amCached]

	// track counts a connection in (false: the server is stopping, see
	// Server.Shutdown), and untrack out; wg waits for them.
	track   func() bool
	untrack func()
	wg      sync.WaitGroup

	mu       sync.Mutex
	stopping bool // shutdown or close has begun: no connection may register
	conns    map[*amConn]struct{}
	openDocs map[amDocKey]map[*amConn]struct{} // for ephemeral messages
}

type amDocKey struct {
	c      Coll
	record string
}

// amCached is a record's document as stored with heads.
type amCached struct {
	heads crdt.Heads
	doc   *crdt.Doc
}

func newAMServer(s *Server) (*amServer, error) {
	m, err := newAMMetrics(s.reg)
	if err != nil {
		return nil, err
	}
	a := &amServer{
		b:        serverBackend{s},
		opts:     s.opts.Automerge.withDefaults(),
		limits:   s.limits,
		log:      s.log,
		peerID:   s.opts.RelayID,
		origins:  s.opts.AllowedOrigins,
		ping:     s.opts.PingInterval,
		slow:     s.opts.SlowWriteTimeout,
		metrics:  m,
		docs:     lru.New[amDocKey, *amCached](s.opts.DocCacheSize),
		conns:    map[*amConn]struct{}{},
		openDocs: map[amDocKey]map[*amConn]struct{}{},
	}
	a.track = func() bool {
		// Under the server's lock, so no connection is counted in once
		// Shutdown or Close has seen the server stopping.
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.shutting {
			return false
		}
		a.wg.Add(1)
		return true
	}
	a.untrack = a.wg.Done
	return a, nil
}

// stopAll marks the endpoint stopping and returns its connections.
func (a *amServer) stopAll() []*amConn {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopping = true
	conns := make([]*amConn, 0, len(a.conns))
	for c := range a.conns {
		conns = append(conns, c)
	}
	return conns
}

// shutdown closes every connection with "going away"; each ends once the
// messages it is handling are answered (their pushes durable). The channel
// closes when all have ended. Call it once the server refuses new
// connections.
func (a *amServer) shutdown() <-chan struct{} {
	for _, c := range a.stopAll() {
		c.stop(websocket.StatusGoingAway, "relay is shutting down")
	}
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	return done
}

// close cuts every connection off at once and waits for them to end (a
// push already started still finishes: see amConn.push).
func (a *amServer) close() {
	for _, c := range a.stopAll() {
		c.cancel()
		c.ws.CloseNow()
	}
	a.wg.Wait()
}

// amCredentials are what a connection presents: from the URL's query
// (api_key, token) or, failing that, cookies (ferry_api_key,
// ferry_token), since a browser's WebSocket cannot set headers.
func amCredentials(r *http.Request) (apiKey, token string) {
	q := r.URL.Query()
	apiKey, token = q.Get("api_key"), q.Get("token")
	if apiKey == "" {
		if c, err := r.Cookie("ferry_api_key"); err == nil {
			apiKey = c.Value
		}
	}
	if token == "" {
		if c, err := r.Cookie("ferry_token"); err == nil {
			token = c.Value
		}
	}
	return apiKey, token
}

// scrubURL returns u for logs, with credentials replaced.
func scrubURL(u *url.URL) string {
	c := *u
	q := c.Query()
	for _, k := range []string{"api_key", "token"} {
		if q.Has(k) {
			q.Set(k, "REDACTED")
		}
	}
	c.RawQuery = q.Encode()
	c.User = nil
	return c.String()
}

// serve handles /automerge and /automerge/COLLECTION.
func (a *amServer) serve(w http.ResponseWriter, r *http.Request) {
	if !checkOrigin(w, r, a.origins, a.log) {
		return
	}
	if !a.track() {
		// Not an HTTP 503: automerge-repo's Node adapter throws on one,
		// taking the app down; a close frame makes it retry later.
		if ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: a.origins}); err == nil {
			ws.Close(websocket.StatusGoingAway, "relay is shutting down")
		}
		return
	}
	defer a.untrack()
	// Credentials are checked before the upgrade, but refused after it: a
	// browser's WebSocket shows no HTTP status, and automerge-repo's Node
	// adapter throws on one, while both read an error message.
	refusal := ""
	var c Coll
	var claims *Claims
	apiKey, token := amCredentials(r)
	app, claims, err := a.b.verify(apiKey, token)
	if err != nil {
		a.metrics.refused.WithLabelValues("auth").Inc()
		refusal = err.Error()
	} else {
		c = Coll{Tenant: app.ID}
		if c.Collection, err = amCollection(r.URL.Path, claims); err != nil {
			a.metrics.refused.WithLabelValues("collection").Inc()
			refusal = err.Error()
		} else if !claims.CanRead(c.Collection) {
			a.metrics.refused.WithLabelValues("forbidden").Inc()
			refusal = fmt.Sprintf("token does not grant read on %q", c.Collection)
		}
	}
	if refusal != "" {
		a.log.Info("automerge-repo connection refused", "remote", r.RemoteAddr, "url", scrubURL(r.URL), "reason", refusal)
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: a.origins})
	if err != nil {
		a.log.Debug("automerge-repo websocket accept failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	ws.SetReadLimit(int64(a.limits.MaxFrame))
	conn := &amConn{
		a: a, ws: ws, coll: c, claims: claims,
		announce: r.URL.Query().Get("announce") == "1",
		docs:     map[string]*amDoc{},
		closed:   make(chan struct{}),
		sem:      make(chan struct{}, a.opts.InFlight),
		limiter:  newRateLimiter(a.opts.MessageRate, a.opts.MessageBurst, time.Now),
	}
	conn.ctx, conn.cancel = context.WithCancel(context.Background())
	a.metrics.connections.Inc()
	defer a.metrics.connections.Dec()
	conn.run(refusal)
}

// amCollection is the collection a connection syncs: the path's last
// element (/automerge/todos), or else the one collection the token names.
func amCollection(path string, claims *Claims) (string, error) {
	if name, ok := strings.CutPrefix(path, "/automerge/"); ok && name != "" {
		if strings.Contains(name, "/") {
			return "", fmt.Errorf("path %q: want /automerge/COLLECTION", path)
		}
		return name, nil
	}
	names := map[string]bool{}
	for _, n := range append(append([]string(nil), claims.Read...), claims.Write...) {
		if n != "*" {
			names[n] = true
		}
	}
	if len(names) != 1 {
		return "", errors.New("name the collection in the path (/automerge/COLLECTION): the token does not grant exactly one")
	}
	for n := range names {
		return n, nil
	}
	panic("unreachable")
}

// loadDoc returns a record's stored document (shared: only read it), or
// ErrNotFound.
func (a *amServer) loadDoc(ctx context.Context, c Coll, record string) (*amCached, error) {
	b, heads, err := a.b.document(ctx, c, record)
	if err != nil {
		return nil, err
	}
	k := amDocKey{c, record}
	if cd, ok := a.docs.Get(k); ok && cd.heads.Equal(heads) {
		return cd, nil
	}
	d, err := crdt.Load(b, "")
	if err != nil {
		return nil, fmt.Errorf("relay: stored document %s/%s/%s: %w", c.Tenant, c.Collection, record, err)
	}
	cd := &amCached{heads: heads, doc: d}
	a.docs.Put(k, cd)
	return cd, nil
}

// register adds a connection to those shutdown and close reach; false if
// they have begun.
func (a *amServer) register(c *amConn) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopping {
		return false
	}
	a.conns[c] = struct{}{}
	return true
}

func (a *amServer) unregister(c *amConn, records []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.conns, c)
	for _, r := range records {
		k := amDocKey{c.coll, r}
		delete(a.openDocs[k], c)
		if len(a.openDocs[k]) == 0 {
			delete(a.openDocs, k)
		}
	}
}

func (a *amServer) opened(c *amConn, record string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := amDocKey{c.coll, record}
	if a.openDocs[k] == nil {
		a.openDocs[k] = map[*amConn]struct{}{}
	}
	a.openDocs[k][c] = struct{}{}
}

// peersOf returns the other connections that have the record open.
func (a *amServer) peersOf(c *amConn, record string) []*amConn {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*amConn
	for o := range a.openDocs[amDocKey{c.coll, record}] {
		if o != c {
			out = append(out, o)
		}
	}
	return out
}

// amConn is one automerge-repo peer. Its read loop decodes messages and
// hands each document's to that document's queue, handled in order by
// one goroutine at a time (up to InFlight documents at once), so the
// pushes of many documents share durable writes. A live goroutine sends
// each open document's changes made by others.
type amConn struct {
	a        *amServer
	ws       *websocket.Conn
	coll     Coll
	claims   *Claims
	peer     string // the client's peer ID
	announce bool

	ctx     context.Context // ends when the connection ends
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	sem     chan struct{} // one token per document being handled
	limiter *rateLimiter

	mu      sync.Mutex
	docs    map[string]*amDoc // by record
	stopped bool
	closed  chan struct{} // closed once a stop's close handshake ends
}

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

	qmu     sync.Mutex
	queue   []*amMessage
	running bool
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
	if c.a.ping > 0 {
		c.wg.Add(1)
		go c.keepalive()
	}
	cursor, err := a.b.head(c.ctx, c.coll)
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
		if err := c.limiter.wait(c.ctx); err != nil {
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
	if len(m.SupportedProtocolVersions) > 0 && !containsString(m.SupportedProtocolVersions, amProtocolV1) {
		c.end("unsupported protocol version")
		return false
	}
	return c.send(&amMessage{
		Type:                    amPeer,
		SenderID:                c.a.peerID,
		TargetID:                c.peer,
		SelectedProtocolVersion: amProtocolV1,
		// A storage ID lets clients keep their sync state with the relay
		// across reconnects; it changes when the store is restored.
		PeerMetadata: &amPeerMetadata{StorageID: "ferry-" + c.a.b.incarnation(), IsEphemeral: false},
	})
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// dispatch handles one message after join; false ends the connection.
func (c *amConn) dispatch(m *amMessage) bool {
	if m.SenderID != c.peer {
		c.end(fmt.Sprintf("message from %q on the connection of %q", m.SenderID, c.peer))
		return false
	}
	if exp := c.claims.ExpiresAt; exp != nil && !c.a.b.now().Before(exp.Time) {
		c.end("token expired; reconnect with a fresh one")
		return false
	}
	switch m.Type {
	case amRequest, amSync:
		record, err := recordForDocumentID(m.DocumentID)
		if err != nil {
			c.end(err.Error())
			return false
		}
		d, err := c.open(record, m.DocumentID)
		if err != nil {
			c.end(err.Error())
			return false
		}
		c.enqueue(d, m)
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

// enqueue queues a sync message for its document, starting the
// document's handler if none runs. It blocks while InFlight documents are
// being handled.
func (c *amConn) enqueue(d *amDoc, m *amMessage) {
	d.qmu.Lock()
	d.queue = append(d.queue, m)
	start := !d.running
	d.running = true
	d.qmu.Unlock()
	if !start {
		return
	}
	select {
	case c.sem <- struct{}{}:
	case <-c.ctx.Done():
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() { <-c.sem }()
		for {
			d.qmu.Lock()
			if len(d.queue) == 0 || c.ctx.Err() != nil {
				d.running = false
				d.queue = nil
				d.qmu.Unlock()
				return
			}
			m := d.queue[0]
			d.queue = d.queue[1:]
			d.qmu.Unlock()
			if err := c.handleSync(d, m); err != nil {
				c.fail(err)
				return
			}
		}
	}()
}

// handleSync takes in a request or sync message: its changes are pushed
// (validated and durable before anything is answered), the rest goes to
// the sync state, and the answer goes back.
func (c *amConn) handleSync(d *amDoc, m *amMessage) error {
	start := time.Now()
	defer func() { c.a.metrics.syncSeconds.Observe(time.Since(start).Seconds()) }()
	sm, err := parseSyncMessage(m.Data)
	if err != nil {
		return &amRefusal{msg: fmt.Sprintf("document %s: %v", d.id, err)}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// The sync state takes in the message against the document as it was
	// before the message's changes, as automerge does when it applies
	// them: seeing its heads already held, it would think the peer had
	// been told of them and send no acknowledgement.
	before, found, err := c.docOrEmpty(d)
	if err != nil {
		return err
	}
	after := before
	if len(sm.changes) > 0 {
		if !c.claims.CanWrite(c.coll.Collection) {
			// A read-only peer's edits stay with it; it still syncs.
			c.a.metrics.refused.WithLabelValues("read_only").Inc()
			c.send(&amMessage{Type: amError, SenderID: c.a.peerID, TargetID: c.peer,
				Message: fmt.Sprintf("token does not grant write on %q: changes to %s refused", c.coll.Collection, d.id)})
		} else {
			chunks := append(d.pending, sm.changes...)
			ordered, missing, err := pendingChanges(before.doc, chunks)
			if err != nil {
				return &amRefusal{msg: fmt.Sprintf("document %s: %v", d.id, err)}
			}
			d.pending, d.missing = nil, missing
			if len(missing) > 0 {
				if chunksSize(chunks) > c.a.limits.MaxRecord {
					return &amRefusal{msg: fmt.Sprintf("document %s: over %d bytes of changes wait for changes never sent", d.id, c.a.limits.MaxRecord)}
				}
				d.pending = chunks // pushed once what they need arrives
			} else {
				if err := c.push(d, ordered); err != nil {
					return err
				}
				if after, found, err = c.docOrEmpty(d); err != nil {
					return err
				}
			}
		}
	}
	if !found && len(sm.heads) == 0 {
		// Nobody has it: tell the peer, and keep the document open so it
		// syncs if someone writes it later.
		return c.sendOK(&amMessage{Type: amUnavailable, SenderID: c.a.peerID, TargetID: c.peer, DocumentID: d.id})
	}
	if err := d.state.Receive(before.doc, sm.encodeV1()); err != nil {
		return &amRefusal{msg: fmt.Sprintf("document %s: %v", d.id, err)}
	}
	// A peer with a document the relay lacks is answered from an empty
	// one, which asks for all of it.
	return c.syncOut(d, after)
}

// docOrEmpty returns the record's stored document, or an empty one (and
// found=false) if the store has none.
func (c *amConn) docOrEmpty(d *amDoc) (cd *amCached, found bool, err error) {
	cd, err = c.a.loadDoc(c.ctx, c.coll, d.record)
	if isNotFound(err) {
		empty, err := crdt.New("")
		return &amCached{doc: empty}, false, err
	}
	return cd, err == nil, err
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
	_, err := c.a.b.push(context.WithoutCancel(c.ctx), c.coll, p)
	var te *transport.Error
	if errors.As(err, &te) && te.Code != transport.CodeInternal {
		c.a.metrics.refused.WithLabelValues(string(te.Code)).Inc()
		return &amRefusal{msg: fmt.Sprintf("document %s: %s: %s", d.id, te.Code, te.Message)}
	}
	return err
}

// syncOut sends the peer what it lacks of the document, if anything.
// d.mu is held.
func (c *amConn) syncOut(d *amDoc, cd *amCached) error {
	msg, ok, err := d.state.Generate(cd.doc)
	d.sent = cd.heads
	if err == nil && len(d.missing) > 0 {
		if !ok {
			// Nothing else to say: ask anyway.
			msg, ok = (&syncMessage{heads: cd.heads}).encodeV1(), true
		}
		if msg, err = withNeed(msg, d.missing); err != nil {
			return err
		}
	}
	if err != nil || !ok {
		return err
	}
	return c.sendOK(&amMessage{Type: amSync, SenderID: c.a.peerID, TargetID: c.peer, DocumentID: d.id, Data: msg})
}

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
	wake, done := a.b.wait(c.coll)
	defer done()
	changed, next, err := a.b.changed(c.ctx, c.coll, cursor, 1000)
	if errors.Is(err, errAMTruncated) {
		// Entries after cursor are gone (compacted away): go on from the
		// head, and send every open document what it lacks.
		if next, err = a.b.head(c.ctx, c.coll); err == nil {
			return next, c.refreshAll(announce)
		}
	}
	if err != nil {
		c.fail(err)
		return cursor, false
	}
	if exp := c.claims.ExpiresAt; exp != nil && !a.b.now().Before(exp.Time) {
		c.end("token expired; reconnect with a fresh one")
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
		if !c.refresh(d) {
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
		ids, err := c.a.b.records(c.ctx, c.coll, after, 256)
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
		if !c.refresh(d) {
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
	return c.refresh(d)
}

// refresh sends the peer the document's latest changes.
func (c *amConn) refresh(d *amDoc) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	cd, err := c.a.loadDoc(c.ctx, c.coll, d.record)
	if isNotFound(err) {
		return true
	}
	if err == nil {
		err = c.syncOut(d, cd)
	}
	if err != nil {
		c.fail(err)
		return false
	}
	return true
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
// explained to it; the relay's own is logged and reported as internal.
func (c *amConn) fail(err error) {
	var r *amRefusal
	switch {
	case errors.As(err, &r):
		c.end(r.msg)
	case errors.Is(err, errAMGone), c.ctx.Err() != nil:
		c.cancel()
	default:
		c.a.log.Error("automerge-repo connection failed", "app", c.coll.Tenant, "collection", c.coll.Collection, "peer", c.peer, "err", err)
		c.stop(websocket.StatusInternalError, "internal error")
	}
}

// end tells the peer why it is disconnected, then closes.
func (c *amConn) end(reason string) {
	c.send(&amMessage{Type: amError, SenderID: c.a.peerID, TargetID: c.peer, Message: reason})
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
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(c.ctx, 2*c.a.ping)
		err := c.ws.Ping(ctx)
		cancel()
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
