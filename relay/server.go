package relay

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/lru"
	"github.com/ferrysync/ferry/transport"
)

// Options configure a Server. Store and Auth are required; every other zero
// field means its default. NewServer does not modify the Options.
type Options struct {
	Store Store
	Auth  *Auth

	// Limits the relay announces and enforces. Default transport.DefaultLimits.
	Limits transport.Limits
	// Logger for structured logs. Default: discard.
	Logger *slog.Logger
	// Registry receives the relay's Prometheus metrics. Default: a registry
	// of the server's own, served at /metrics with Go and process metrics.
	Registry *prometheus.Registry
	// Now is the clock for leases and token expiry. Default time.Now.
	Now func() time.Time
	// RelayID names this relay in welcome messages. Default "ferry-relay".
	RelayID string

	HelloTimeout     time.Duration // to receive hello after connecting; default 10 s
	PingInterval     time.Duration // WebSocket keepalive; default 15 s, negative: off
	DefaultLeaseTTL  time.Duration // when a request gives none; default 30 s
	MaxLeaseTTL      time.Duration // default 5 min
	MaxLag           int           // log entries a subscriber may trail by; default 10,000
	SlowWriteTimeout time.Duration // for a subscriber to take a live message; default 10 s
	DocCacheSize     int           // documents kept loaded for pushes; default 4096

	// AllowedOrigins lists the origins of browser pages that may connect
	// to /ws and /automerge from another origin (see checkOrigin).
	AllowedOrigins []string
	// Automerge bounds the automerge-repo endpoint.
	Automerge AutomergeOptions
}

func (o *Options) withDefaults() Options {
	v := *o
	v.Limits = v.Limits.WithDefaults()
	if v.Logger == nil {
		v.Logger = slog.New(slog.DiscardHandler)
	}
	if v.Now == nil {
		v.Now = time.Now
	}
	if v.RelayID == "" {
		v.RelayID = "ferry-relay"
	}
	defaultDur(&v.HelloTimeout, 10*time.Second)
	defaultDur(&v.PingInterval, 15*time.Second)
	defaultDur(&v.DefaultLeaseTTL, 30*time.Second)
	defaultDur(&v.MaxLeaseTTL, 5*time.Minute)
	defaultDur(&v.SlowWriteTimeout, 10*time.Second)
	if v.MaxLag <= 0 {
		v.MaxLag = 10_000
	}
	if v.DocCacheSize <= 0 {
		v.DocCacheSize = 4096
	}
	return v
}

func defaultDur(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}

// Server is the relay: it accepts device connections on /ws, serves
// /healthz and /metrics, and keeps every tenant's collections in its Store.
// Its methods are safe for concurrent use.
type Server struct {
	opts    Options
	store   Store
	auth    *Auth
	limits  transport.Limits
	log     *slog.Logger
	now     func() time.Time
	metrics *metrics
	reg     *prometheus.Registry

	hub      *hub // log appends, for subscribers
	leases   *hub // lease releases, for waiters
	docs     *lru.Cache[cachedDoc, *crdt.Doc]
	recLocks *recordLocks
	am       *amServer // automerge-repo clients

	// hooks let tests wait for events that have no other signal.
	hooks struct {
		leaseWaiting func(Coll) // a lease request starts waiting
		sessionEnded func()     // a session has released everything
	}

	mu         sync.Mutex
	sessions   map[*session]struct{}
	committers map[Coll]*committer
	shutting   bool
	wg         sync.WaitGroup // sessions
}

// NewServer returns a relay serving from o.Store.
func NewServer(o *Options) (*Server, error) {
	if o == nil || o.Store == nil || o.Auth == nil {
		return nil, errors.New("relay: NewServer needs a Store and an Auth")
	}
	opts := o.withDefaults()
	s := &Server{
		opts:       opts,
		store:      opts.Store,
		auth:       opts.Auth,
		limits:     opts.Limits,
		log:        opts.Logger,
		now:        opts.Now,
		hub:        newHub(),
		leases:     newHub(),
		docs:       lru.New[cachedDoc, *crdt.Doc](opts.DocCacheSize),
		recLocks:   newRecordLocks(),
		sessions:   map[*session]struct{}{},
		committers: map[Coll]*committer{},
	}
	s.reg = opts.Registry
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
		s.reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	}
	m, err := newMetrics(s.reg, s)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	if s.am, err = newAMServer(s); err != nil {
		return nil, err
	}
	return s, nil
}

// Handler serves /ws (devices), /automerge (automerge-repo clients),
// /healthz and /metrics.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", s.serveWS)
	mux.HandleFunc("/automerge", s.am.serve)
	mux.HandleFunc("/automerge/", s.am.serve)
	mux.HandleFunc("/healthz", s.healthz)
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	return mux
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	if s.isShuttingDown() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	if !checkOrigin(w, r, s.opts.AllowedOrigins, s.log) {
		return
	}
	conn, err := transport.Accept(w, r, &transport.Options{Limits: s.limits, PingInterval: s.opts.PingInterval,
		Accept: &websocket.AcceptOptions{OriginPatterns: s.opts.AllowedOrigins}})
	if err != nil {
		s.log.Debug("websocket accept failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	s.metrics.connections.Inc()
	defer s.metrics.connections.Dec()
	s.serve(conn)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	if s.isShuttingDown() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	if _, err := s.store.Stats(r.Context()); err != nil {
		http.Error(w, "store unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ok\n"))
}

func (s *Server) track(sess *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting {
		return false
	}
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) isShuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutting
}

// Shutdown stops the relay gracefully: new connections are refused, and
// each session is closed with shutting_down once the request it is handling
// (a push included) has been answered. It returns when every session has
// ended or ctx is done. Stop the HTTP server's listener first (or after:
// either way new devices are refused), and close the Store after.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutting = true
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	for _, sess := range sessions {
		go sess.shutdown()
	}
	s.am.shutdown()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
