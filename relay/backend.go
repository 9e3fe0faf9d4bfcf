package relay

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// Backend is all an endpoint serving another protocol beside /ws (package
// relay/amrepo serves automerge-repo's) uses of the relay: auth and
// quotas, the push path (the only way its changes reach the store), reads
// of stored documents and of the log, and the relay's settings. Keeping it
// this narrow lets the relay's storage change under the endpoint. A
// Server's Backend method returns it; its methods are safe for concurrent
// use.
type Backend interface {
	// Config is the Server's settings an endpoint follows too.
	Config() EndpointConfig
	// CheckOrigin refuses (HTTP 403, logged) a browser page whose origin
	// the relay does not allow, as /ws does; true lets r through.
	CheckOrigin(w http.ResponseWriter, r *http.Request) bool
	// Verify checks an API key and token (see Auth.Verify).
	Verify(apiKey, token string) (App, *Claims, error)
	// CheckToken re-checks claims Verify returned, by the relay's clock:
	// expiry, and whether the key that signed them is still the app's
	// (see Auth.Check); the error says which failed.
	CheckToken(claims *Claims) error
	// Connect counts a connection of app against its quota, or refuses
	// it; each nil return is matched by one Disconnect.
	Connect(app string) error
	Disconnect(app string)
	// Push validates, stores and fans out changes exactly as a device's
	// push; it returns once they are durable. Past the relay's memory
	// budget (Options.MaxMemory) it may wait, then refuse with a
	// *transport.Error of code busy, having stored nothing: push again
	// after its RetryMS.
	Push(ctx context.Context, c Coll, p *transport.Push) (*transport.Ack, error)
	// ReadDocument calls read with a record's document as stored, and its
	// heads, or returns ErrNotFound. The document is the one pushes to
	// /ws merge into, from the Server's one document cache: a cached
	// document is read with no store I/O, and one not cached is read from
	// the store and loaded into the cache (or, while a push's changes to
	// it are not durable yet, a copy is loaded for the call and freed
	// after it). known, if not nil, are heads the caller knows the record
	// has reached (from its log entries): a cached document lacking any
	// of them is checked against the store, which another relay process
	// may have written. While read runs no push changes the document, so
	// read must be quick and only read: never keep the document, never
	// wait on the network, never push. A document is loaded within the
	// relay's memory budget: past it, ReadDocument may wait, then return
	// busy as Push does, without calling read.
	ReadDocument(ctx context.Context, c Coll, record string, known crdt.Heads, read func(doc *crdt.Doc, heads crdt.Heads) error) error
	// ChargeMemory counts n bytes an endpoint holds for a client (its
	// queued messages) in the relay's memory budget, without waiting,
	// until release is called (once; later calls do nothing): work the
	// relay starts meanwhile waits for, or is refused, what they take.
	ChargeMemory(n int64) (release func())
	// Records pages through a collection's record IDs in order.
	Records(ctx context.Context, c Coll, after string, limit int) ([]string, error)
	// Head is the collection's log head.
	Head(ctx context.Context, c Coll) (uint64, error)
	// Log reads the collection's log (see Store.Log): entries after
	// cursor after, or a *TruncatedError if they are gone.
	Log(ctx context.Context, c Coll, after uint64, limit int) ([]LogEntry, error)
	// Wait returns a channel closed at the collection's next append, and
	// done, to call once when no longer waiting.
	Wait(c Coll) (<-chan struct{}, func())
	// Now is the relay's clock, for token expiry.
	Now() time.Time
	// Incarnation is the store's (see Store.Incarnation).
	Incarnation() string
	// JoinPresence makes sink receive the collection's presence from
	// devices (and from other relays' endpoints) until leave is called.
	JoinPresence(c Coll, sink PresenceSink) (leave func())
	// PublishPresence passes a client's presence on to the collection's
	// devices; from, if not nil, is the sending connection's sink.
	PublishPresence(c Coll, m *PresenceMessage, from PresenceSink)
	// PresenceSent counts a device's presence queued for a client, or
	// dropped because the client was behind.
	PresenceSent(queued bool)
}

// EndpointConfig is what of a Server's Options an endpoint follows, so
// that one setting governs /ws and every endpoint alike.
type EndpointConfig struct {
	Limits           transport.Limits
	Logger           *slog.Logger
	Registry         prometheus.Registerer // the Server's metrics registry
	RelayID          string
	AllowedOrigins   []string
	PingInterval     time.Duration // negative: off
	SlowWriteTimeout time.Duration // for a client to take a message
}

// An Endpoint serves another protocol over the relay's Backend, mounted
// on a Server with Mount: the Server routes its path to it and stops it
// with Shutdown and Close.
type Endpoint interface {
	http.Handler
	// Shutdown stops the endpoint gracefully: new connections are
	// refused, and each open one ends once what it is handling is
	// answered. The channel is closed when every connection has ended.
	Shutdown() <-chan struct{}
	// Close cuts every connection off and returns once all have ended.
	Close()
}

// Mount serves e at path and below it (path, path+"/...") in Handler,
// and stops it in Shutdown and Close. Call it before Handler.
func (s *Server) Mount(path string, e Endpoint) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting {
		return errors.New("relay: Mount after Shutdown or Close")
	}
	s.endpoints = append(s.endpoints, mounted{path, e})
	return nil
}

type mounted struct {
	path string
	e    Endpoint
}

// mountedEndpoints returns the endpoints mounted so far.
func (s *Server) mountedEndpoints() []mounted {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]mounted(nil), s.endpoints...)
}

// Backend returns the relay as an Endpoint sees it.
func (s *Server) Backend() Backend { return serverBackend{s} }

// serverBackend is Backend over a Server's auth, store and hub.
type serverBackend struct{ s *Server }

func (b serverBackend) Config() EndpointConfig {
	o := b.s.opts
	return EndpointConfig{
		Limits: b.s.limits, Logger: b.s.log, Registry: b.s.reg, RelayID: o.RelayID,
		AllowedOrigins: o.AllowedOrigins, PingInterval: o.PingInterval, SlowWriteTimeout: o.SlowWriteTimeout,
	}
}

func (b serverBackend) CheckOrigin(w http.ResponseWriter, r *http.Request) bool {
	return checkOrigin(w, r, b.s.opts.AllowedOrigins, b.s.log)
}

func (b serverBackend) Verify(apiKey, token string) (App, *Claims, error) {
	return b.s.auth.Verify(apiKey, token)
}

func (b serverBackend) CheckToken(claims *Claims) error { return b.s.recheck("automerge", claims) }

func (b serverBackend) Connect(app string) error {
	if e := b.s.quotas.connect(app); e != nil {
		return e
	}
	return nil
}

func (b serverBackend) Disconnect(app string) {
	b.s.quotas.disconnect(app)
	if h := b.s.hooks.sessionEnded; h != nil {
		h()
	}
}

func (b serverBackend) Push(ctx context.Context, c Coll, p *transport.Push) (*transport.Ack, error) {
	for _, r := range p.Records {
		b.s.metrics.bytesIn.Add(float64(len(r.Data)))
	}
	return b.s.pushCounted(ctx, c, p)
}

func (b serverBackend) ReadDocument(ctx context.Context, c Coll, record string, known crdt.Heads, read func(*crdt.Doc, crdt.Heads) error) error {
	return b.s.readDocument(ctx, c, record, known, read)
}

// queuedDoc reports whether the record's document is queued: merged with
// changes that are not durable yet.
func (s *Server) queuedDoc(k recordKey) bool {
	s.mu.Lock()
	cm := s.committers[k.c]
	s.mu.Unlock()
	if cm == nil {
		return false
	}
	cm.mu.Lock()
	defer cm.mu.Unlock()
	_, ok := cm.queued[k.record]
	return ok
}

func (b serverBackend) ChargeMemory(n int64) func() { return b.s.mem.charge(n).release }

func (b serverBackend) Records(ctx context.Context, c Coll, after string, limit int) ([]string, error) {
	recs, err := b.s.store.Records(ctx, c, after, limit)
	ids := make([]string, len(recs))
	for i, r := range recs {
		ids[i] = r.ID
	}
	return ids, err
}

func (b serverBackend) Head(ctx context.Context, c Coll) (uint64, error) {
	return b.s.store.Head(ctx, c)
}

func (b serverBackend) Log(ctx context.Context, c Coll, after uint64, limit int) ([]LogEntry, error) {
	return b.s.store.Log(ctx, c, after, limit)
}

func (b serverBackend) Wait(c Coll) (<-chan struct{}, func()) { return b.s.hub.wait(c) }
func (b serverBackend) Now() time.Time                        { return b.s.now() }
func (b serverBackend) Incarnation() string                   { return b.s.store.Incarnation() }

// The presence limits an endpoint keeps per connection, as the relay does
// per device session: messages waiting for one client (then dropped), and
// records one client may be present on.
const (
	PresenceQueue   = presenceQueue
	PresenceRecords = presenceRecords
)

// PresenceMessage is presence on its way through an endpoint, with what
// automerge-repo clients need to drop duplicates.
type PresenceMessage struct {
	Presence transport.Presence
	Session  string // the sender's session
	Count    uint64 // grows within the session
}

// Goodbye is the message saying that m's sender left m's record, the
// next of its session.
func (m PresenceMessage) Goodbye() *PresenceMessage {
	bye := m
	bye.Presence.Data, bye.Count = goodbye, m.Count+1
	return &bye
}

// PresenceSink receives the presence devices send on a collection (see
// Backend.JoinPresence). DeliverPresence must not block.
type PresenceSink interface {
	DeliverPresence(m *PresenceMessage)
}

// endpointSink is an endpoint's connection among the presence hub's
// sinks. Endpoint connections pass presence among themselves, so the hub
// gives them only what devices and other relays send.
type endpointSink struct{ s PresenceSink }

func (e endpointSink) deliverPresence(m *presenceMsg) {
	e.s.DeliverPresence(&PresenceMessage{Presence: m.p, Session: m.session, Count: m.count})
}

func (endpointSink) fromAutomergeRepo() bool { return true }

func (b serverBackend) JoinPresence(c Coll, sink PresenceSink) func() {
	return b.s.pres.join(c, endpointSink{sink})
}

func (b serverBackend) PublishPresence(c Coll, m *PresenceMessage, from PresenceSink) {
	var f presenceSink
	if from != nil {
		f = endpointSink{from}
	}
	b.s.pres.publish(c, &presenceMsg{p: m.Presence, session: m.Session, count: m.Count}, f)
}

func (b serverBackend) PresenceSent(queued bool) {
	if queued {
		b.s.pres.sent.Inc()
	} else {
		b.s.pres.dropped.Inc()
	}
}
