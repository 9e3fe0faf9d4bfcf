package amrepo

import (
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
	"golang.org/x/time/rate"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/transport"
)

// Options bound the endpoint. A nil *Options is valid: zero fields mean
// their defaults. New does not modify it.
type Options struct {
	// MaxDocs is how many documents one connection may sync (request,
	// sync, or be announced). Default 50,000.
	MaxDocs int
	// MessageRate is the messages per second a connection may send on
	// average, and MessageBurst how many it may send at once; past them
	// the relay reads the connection more slowly (TCP pushes back).
	// Defaults 5,000 and 20,000.
	MessageRate  float64
	MessageBurst int
	// InFlight is how many of one connection's documents are handled at
	// once (their pushes wait for durable storage together). Default 64.
	InFlight int
	// MaxQueuedBytes bounds what one connection's sync messages hold from
	// when they are read until they are answered: each counts its bytes
	// plus, if it carries changes, max_inflated (what framing them may
	// inflate). Past it the connection is not read until answers free
	// room (back-pressure: the client waits; nothing is refused). A
	// message larger than the bound is taken alone. Default 16 MiB.
	MaxQueuedBytes int64
	// MaxWaitingBytes bounds the changes one connection may have waiting
	// for changes they depend on (see docs/automerge-repo.md), across its
	// documents; each document's are bounded by max_record too. Past it
	// the connection is refused. Default 8 MiB.
	MaxWaitingBytes int64
	// MaxSyncStateBytes bounds what the sync states of one connection's
	// documents keep of its messages: automerge keeps each document's
	// last heads, needs and bloom filters from the peer (a bloom filter
	// takes about 10 bits per change the peer has since they last
	// synced). Past it the connection is refused. Default 64 MiB.
	MaxSyncStateBytes int64
	// MaxBusyWait bounds how long a connection's handler keeps retrying
	// a push or a document load the relay refused with busy (its memory
	// budget, max_memory, in use), backing off from the retry_ms the
	// refusal suggests; meanwhile the connection's queue fills and the
	// relay stops reading it. Still busy past it, the connection is
	// closed with 1013 (Try Again Later): automerge-repo's client
	// reconnects and syncs again. Default 30 s.
	MaxBusyWait time.Duration
}

func (p *Options) withDefaults() Options {
	var o Options
	if p != nil {
		o = *p
	}
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
	if o.MaxQueuedBytes <= 0 {
		o.MaxQueuedBytes = DefaultMaxQueuedBytes
	}
	if o.MaxWaitingBytes <= 0 {
		o.MaxWaitingBytes = DefaultMaxWaitingBytes
	}
	if o.MaxSyncStateBytes <= 0 {
		o.MaxSyncStateBytes = DefaultMaxSyncStateBytes
	}
	if o.MaxBusyWait <= 0 {
		o.MaxBusyWait = DefaultMaxBusyWait
	}
	return o
}

// The defaults of Options.MaxQueuedBytes, MaxWaitingBytes and
// MaxSyncStateBytes: per connection, what it may make the relay hold
// beyond the documents themselves (which the relay's document cache
// bounds).
const (
	DefaultMaxQueuedBytes    = 16 << 20
	DefaultMaxWaitingBytes   = 8 << 20
	DefaultMaxSyncStateBytes = 64 << 20
)

// DefaultMaxBusyWait is Options.MaxBusyWait's default.
const DefaultMaxBusyWait = 30 * time.Second

// Endpoint serves automerge-repo clients: each connection is a peer that
// syncs documents of one collection, each document a record. Mount it on
// the relay it was made with (see relay.Server.Mount), at /automerge. Its
// methods are safe for concurrent use.
type Endpoint struct {
	b       relay.Backend
	opts    Options
	limits  transport.Limits
	log     *slog.Logger
	peerID  string
	origins []string
	ping    time.Duration
	slow    time.Duration // for a client to take a message
	metrics *amMetrics

	wg sync.WaitGroup // connections counted in by track

	// hooks, if set (by tests, before connections), see a connection's
	// reads and its read loop waiting for room in its budget, drive
	// keepalive's ticks, seeing those skipped while the loop waits, and
	// drive the waits before busy work is retried.
	hooks struct {
		read    func(c *amConn, n int)
		paused  func(c *amConn, used int64)
		tick    <-chan time.Time
		skipped func()
		// busyWait replaces the timer a handler waits on before it
		// retries work refused with busy.
		busyWait func(c *amConn, d time.Duration) <-chan time.Time
	}

	mu       sync.Mutex
	stopping bool // shutdown or close has begun: no connection may register
	conns    map[*amConn]struct{}
	openDocs map[amDocKey]map[*amConn]struct{} // for ephemeral messages
}

type amDocKey struct {
	c      relay.Coll
	record string
}

// New returns an endpoint serving automerge-repo clients from the relay
// b, with the relay's limits, logger, metrics registry, relay ID, allowed
// origins and timeouts (see relay.EndpointConfig).
func New(b relay.Backend, o *Options) (*Endpoint, error) {
	cfg := b.Config()
	m, err := newAMMetrics(cfg.Registry)
	if err != nil {
		return nil, err
	}
	return &Endpoint{
		b:        b,
		opts:     o.withDefaults(),
		limits:   cfg.Limits,
		log:      cfg.Logger,
		peerID:   cfg.RelayID,
		origins:  cfg.AllowedOrigins,
		ping:     cfg.PingInterval,
		slow:     cfg.SlowWriteTimeout,
		metrics:  m,
		conns:    map[*amConn]struct{}{},
		openDocs: map[amDocKey]map[*amConn]struct{}{},
	}, nil
}

// Mount serves automerge-repo clients on s at /automerge (and
// /automerge/COLLECTION), as ferry relay does: New, then s.Mount.
func Mount(s *relay.Server, o *Options) error {
	e, err := New(s.Backend(), o)
	if err != nil {
		return err
	}
	return s.Mount("/automerge", e)
}

// track counts a connection in, unless the endpoint is stopping; each
// true return is matched by one wg.Done.
func (a *Endpoint) track() bool {
	// Under the lock stopAll takes, so no connection is counted in once
	// Shutdown or Close has begun to wait.
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopping {
		return false
	}
	a.wg.Add(1)
	return true
}

// stopAll marks the endpoint stopping and returns its connections.
func (a *Endpoint) stopAll() []*amConn {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopping = true
	conns := make([]*amConn, 0, len(a.conns))
	for c := range a.conns {
		conns = append(conns, c)
	}
	return conns
}

// Shutdown closes every connection with "going away"; each ends once the
// messages it is handling are answered (their pushes durable). The channel
// closes when all have ended. New connections are refused from now on.
func (a *Endpoint) Shutdown() <-chan struct{} {
	for _, c := range a.stopAll() {
		c.stop(websocket.StatusGoingAway, "relay is shutting down")
	}
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	return done
}

// Close cuts every connection off at once and waits for them to end (a
// push already started still finishes: see amConn.push).
func (a *Endpoint) Close() {
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

// ServeHTTP handles /automerge and /automerge/COLLECTION.
func (a *Endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !a.b.CheckOrigin(w, r) {
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
	defer a.wg.Done()
	// Credentials are checked before the upgrade, but refused after it: a
	// browser's WebSocket shows no HTTP status, and automerge-repo's Node
	// adapter throws on one, while both read an error message.
	refusal := ""
	var c relay.Coll
	var claims *relay.Claims
	apiKey, token := amCredentials(r)
	app, claims, err := a.b.Verify(apiKey, token)
	check := ""
	if err != nil {
		a.metrics.refused.WithLabelValues("auth").Inc()
		refusal, check = err.Error(), relay.RefusedCheck(err)
	} else {
		c = relay.Coll{Tenant: app.ID}
		if c.Collection, err = amCollection(r.URL.Path, claims); err != nil {
			a.metrics.refused.WithLabelValues("collection").Inc()
			refusal = err.Error()
		} else if !claims.CanRead(c.Collection) {
			a.metrics.refused.WithLabelValues("forbidden").Inc()
			refusal = fmt.Sprintf("token does not grant read on %q", c.Collection)
		} else if err := a.b.Connect(app.ID); err != nil {
			// The app's max_connections counts these connections too.
			a.metrics.refused.WithLabelValues("quota").Inc()
			refusal = err.Error()
		} else {
			defer a.b.Disconnect(app.ID)
		}
	}
	if refusal != "" {
		a.log.Info("automerge-repo connection refused", "remote", r.RemoteAddr, "url", scrubURL(r.URL), "check", check, "reason", refusal)
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
		budget:   &queueBudget{max: a.opts.MaxQueuedBytes},
		limiter:  rate.NewLimiter(rate.Limit(a.opts.MessageRate), a.opts.MessageBurst),
		pres:     newAMPresence(),
	}
	conn.ctx, conn.cancel = context.WithCancel(context.Background())
	a.metrics.connections.Inc()
	defer a.metrics.connections.Dec()
	conn.run(refusal)
}

// amCollection is the collection a connection syncs: the path's last
// element (/automerge/todos), or else the one collection the token names.
func amCollection(path string, claims *relay.Claims) (string, error) {
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

// register adds a connection to those shutdown and close reach; false if
// they have begun.
func (a *Endpoint) register(c *amConn) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopping {
		return false
	}
	a.conns[c] = struct{}{}
	return true
}

func (a *Endpoint) unregister(c *amConn, records []string) {
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

func (a *Endpoint) opened(c *amConn, record string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := amDocKey{c.coll, record}
	if a.openDocs[k] == nil {
		a.openDocs[k] = map[*amConn]struct{}{}
	}
	a.openDocs[k][c] = struct{}{}
}

// peersOf returns the other connections that have the record open.
func (a *Endpoint) peersOf(c *amConn, record string) []*amConn {
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
