package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferrysync/ferry/internal/keylock"
	"github.com/ferrysync/ferry/internal/lru"
	"github.com/ferrysync/ferry/transport"
)

// Options configure a Server. Store and Auth are required; every other zero
// field means its default. NewServer does not modify the Options.
type Options struct {
	Store Store
	// Auth checks the devices' tokens. The Server neither reloads nor
	// closes it: its owner does (Auth.Reload, Auth.Close after the
	// Server's Close).
	Auth *Auth

	// Limits the relay announces and enforces. Default transport.DefaultLimits.
	Limits transport.Limits
	// Logger for structured logs. Default: discard.
	Logger *slog.Logger
	// Registry receives the relay's Prometheus metrics. Default: a registry
	// of the server's own, served at /metrics with Go and process metrics.
	Registry *prometheus.Registry
	// Now is the clock for leases and token expiry. Default: the Store's
	// (see StoreClock) if it has one, else time.Now. It is called from
	// every connection's goroutines at once, so it must be safe for
	// concurrent use.
	Now func() time.Time
	// RelayID names this relay in welcome messages. Default "ferry-relay".
	RelayID string

	HelloTimeout     time.Duration // to receive hello after connecting; default 10 s
	PingInterval     time.Duration // WebSocket keepalive; default 15 s, negative: off
	DefaultLeaseTTL  time.Duration // when a request gives none; default 30 s
	MaxLeaseTTL      time.Duration // default 5 min
	MaxLag           int           // log entries a subscriber may trail by; default 10,000
	SlowWriteTimeout time.Duration // for a subscriber to take a live message; default 10 s
	// DocCacheBytes bounds the memory of the documents kept loaded for
	// pushes and endpoints' reads (see Backend.ReadDocument), each
	// counted by what it holds (crdt.Doc.Cost: about 800 to 1,100 bytes
	// an operation, whatever its stored size). A document that leaves
	// frees its memory at once; one in use stays until its push is done.
	// Default a quarter of MaxMemory (64 MiB); it may not pass
	// MaxMemory.
	DocCacheBytes int64
	// MaxMemory is the relay's memory budget: what the documents it
	// holds loaded (cached, or loaded for a push, a read or a
	// compaction), the pushes it is checking and committing, and the
	// pages and live messages on their way to devices may take in all,
	// each counted as it takes it (documents by crdt.Doc.Cost). Past it,
	// new work waits up to MemoryWait for room, then is refused with
	// busy (nothing done; the device retries after retry_ms). See
	// docs/operations.md, "Memory". Default 256 MiB.
	MaxMemory int64
	// MemoryWait is how long work waits for room in MaxMemory before it
	// is refused with busy. Default 2 s.
	MemoryWait time.Duration

	// CompactInterval is how often the background compactor looks for
	// records whose tail outgrew their snapshot (a push that makes one
	// also wakes it), and how long it leaves a record it compacted before
	// it takes it again. Default 1 s; negative: never (for tests).
	CompactInterval time.Duration
	// LogRetention is how many of each collection's latest log entries
	// are kept once snapshots hold them; older ones are truncated, and a
	// device whose cursor is below them catches up from snapshots.
	// Default 100,000; negative: keep every entry.
	LogRetention int

	// Quotas bound what each app may use of the relay, by app ID (each
	// one an app of Auth). An app without one, and a zero field, has no
	// limit. See Quota.
	Quotas map[string]Quota
	// AllowedOrigins lists the origins of browser pages that may connect
	// to /ws and /automerge from another origin: host patterns
	// ("app.example.com", "*.example.com", "localhost:5173"), which admit
	// https pages (and http ones on a loopback host), or, with "://", a
	// scheme and host ("http://app.example.com"), matched with path.Match,
	// case-insensitively. A pattern that matches any site ("*") is refused
	// with ErrOriginPattern. Requests without an Origin header (not from a
	// browser) and pages served by the relay's own host always pass. A
	// refused page gets HTTP 403 saying why, and the relay logs it.
	AllowedOrigins []string
}

func (o *Options) withDefaults() Options {
	v := *o
	v.Limits = v.Limits.WithDefaults()
	if v.Logger == nil {
		v.Logger = slog.New(slog.DiscardHandler)
	}
	if v.Now == nil {
		v.Now = nowFrom(v.Store)
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
	if v.MaxMemory <= 0 {
		v.MaxMemory = DefaultMaxMemory
	}
	if v.DocCacheBytes <= 0 {
		v.DocCacheBytes = v.MaxMemory / 4
	}
	defaultDur(&v.MemoryWait, 2*time.Second)
	defaultDur(&v.CompactInterval, time.Second)
	if v.LogRetention == 0 {
		v.LogRetention = 100_000
	}
	return v
}

// DefaultMaxMemory is Options.MaxMemory's default: room for the document
// cache's default 64 MiB, and for the largest record the default limits
// let in (max_record_ops operations, some 220 MiB loaded) alone.
const DefaultMaxMemory = 256 << 20

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

	hub       *hub // log appends, for subscribers
	leases    *hub // lease releases, for waiters
	pres      *presenceHub
	docs      *lru.Cache[recordKey, *relayDoc]
	mem       *memBudget // the process's memory budget (see Options.MaxMemory)
	marks     staleMarks // other relay processes' appends, for docs
	compactor *compactor
	recLocks  *keylock.Locks[recordKey] // merges, per record
	quotas    *quotas
	watch     *storeWatch // nil unless the Store has StoreEvents
	endpoints []mounted   // see Mount; guarded by mu

	// releaseStop ends releaseLoop, which closes releaseDone.
	releaseStop, releaseDone chan struct{}

	// groupBytes and groupEntries cap one group commit (see nextGroup);
	// tests lift them to reach the split on ErrAppendTooLarge.
	groupBytes, groupEntries int
	// groupWait bounds a flusher's wait for pushes merging (gather).
	groupWait time.Duration

	// hooks let tests wait for events that have no other signal, and
	// drive timers by the fake clock.
	hooks struct {
		leaseWaiting func(Coll) // a lease request starts waiting
		sessionEnded func()     // a session has released everything
		// newTimer replaces time.NewTimer for the timers that wake a
		// subscription when its token expires.
		newTimer func(time.Duration) (<-chan time.Time, func() bool)
	}

	mu         sync.Mutex
	sessions   map[*session]struct{}
	committers map[Coll]*committer // see pushCounted
	pushes     map[Coll]int        // pushes in progress per collection
	// lastGroups keeps, for a collection whose committer was dropped
	// within groupWait of its last group's write, that group's size and
	// time, for the committer made next (see committer.gather).
	lastGroups map[Coll]groupMark
	shutting   bool           // no new sessions; set by Shutdown or Close
	drained    chan struct{}  // made when shutting begins; closed once no session is left
	closed     bool           // Close has begun: helpers may not be added
	helpers    sync.WaitGroup // goroutines Shutdown and Close start
	closeOnce  sync.Once
}

// NewServer returns a relay serving from o.Store.
func NewServer(o *Options) (*Server, error) {
	if o == nil || o.Store == nil || o.Auth == nil {
		return nil, errors.New("relay: NewServer needs a Store and an Auth")
	}
	opts := o.withDefaults()
	if err := opts.Limits.Check(); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	if err := checkOriginPatterns(opts.AllowedOrigins); err != nil {
		return nil, err
	}
	if opts.DocCacheBytes > opts.MaxMemory {
		return nil, fmt.Errorf("relay: the document cache (%d bytes) does not fit in max_memory (%d bytes)", opts.DocCacheBytes, opts.MaxMemory)
	}
	quotas, err := newQuotas(&opts)
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:       opts,
		store:      opts.Store,
		auth:       opts.Auth,
		limits:     opts.Limits,
		log:        opts.Logger,
		now:        opts.Now,
		hub:        newHub(),
		leases:     newHub(),
		docs:       lru.NewSized(opts.DocCacheBytes, func(_ recordKey, rd *relayDoc) { rd.free() }),
		mem:        newMemBudget(opts.MaxMemory, opts.MemoryWait),
		sessions:   map[*session]struct{}{},
		committers: map[Coll]*committer{},
		lastGroups: map[Coll]groupMark{},
		pushes:     map[Coll]int{},
		quotas:     quotas,
	}
	s.groupBytes, s.groupEntries = groupBytes, groupEntries
	s.groupWait = groupWait
	s.recLocks = keylock.New(compareRecordKeys)
	s.reg = opts.Registry
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
		s.reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	}
	m, err := newMetrics(s.reg, s)
	if err != nil {
		return nil, err
	}
	if s.pres, err = newPresenceHub(s.reg, s.log); err != nil {
		return nil, err
	}
	s.metrics = m
	// Before work waits for memory, the cache gives back documents no
	// push is using.
	s.mem.reclaim = s.docs.Trim
	s.mem.refused = m.memRefusals.Inc
	s.mem.freedSignal = make(chan struct{}, 1)
	s.releaseDone, s.releaseStop = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(s.releaseDone)
		s.releaseLoop(s.mem.freedSignal, s.releaseStop)
	}()
	s.compactor = newCompactor(s)
	s.watch = startStoreWatch(s)
	return s, nil
}

// MaxMemory is the relay's memory budget (Options.MaxMemory, defaulted).
func (s *Server) MaxMemory() int64 { return s.opts.MaxMemory }

// DocCacheBytes is the bound of the relay's document cache
// (Options.DocCacheBytes, defaulted).
func (s *Server) DocCacheBytes() int64 { return s.opts.DocCacheBytes }

// Handler serves /ws (devices), /healthz, /metrics and the endpoints
// mounted (see Mount).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", s.serveWS)
	for _, m := range s.mountedEndpoints() {
		mux.Handle(m.path, m.e)
		mux.Handle(m.path+"/", m.e)
	}
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

// track registers a session from its first moment, so Shutdown and Close
// reach it even before hello; false means the relay is shutting down.
func (s *Server) track(sess *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting {
		return false
	}
	s.sessions[sess] = struct{}{}
	return true
}

// untrack is the last thing a session does, once everything it started
// has ended.
func (s *Server) untrack(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, sess)
	if s.shutting && len(s.sessions) == 0 {
		close(s.drained)
	}
}

func (s *Server) isShuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutting
}

// stopAccepting refuses new sessions from now on. It returns the sessions
// open, and a channel closed once none is left. The caller holds s.mu.
func (s *Server) stopAccepting() ([]*session, <-chan struct{}) {
	if !s.shutting {
		s.shutting = true
		s.drained = make(chan struct{})
		if len(s.sessions) == 0 {
			close(s.drained)
		}
	}
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	return sessions, s.drained
}

// goHelper runs f on a goroutine that Close waits for. The caller holds
// s.mu, so no helper is added once Close has begun to wait.
func (s *Server) goHelper(f func()) {
	s.helpers.Add(1)
	go func() {
		defer s.helpers.Done()
		f()
	}()
}

// Shutdown stops the relay gracefully: new connections are refused, and
// each session is closed with shutting_down once the request it is handling
// (a push included) has been answered. It returns nil when every session
// has ended, or ctx's error if ctx ends first; the sessions then go on
// closing in the background, as their requests finish. Call Close after
// Shutdown either way: it cuts off whatever is left and waits for it.
//
// Stop the HTTP server's listener first (or after: either way new devices
// are refused), and close the Store after Close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	sessions, drained := s.stopAccepting()
	if !s.closed {
		for _, sess := range sessions {
			s.goHelper(sess.shutdown)
		}
	}
	endpoints := s.endpoints
	s.mu.Unlock()
	var done []<-chan struct{}
	for _, m := range endpoints {
		done = append(done, m.e.Shutdown())
	}
	select {
	case <-drained:
		for _, d := range done {
			select {
			case <-d:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		// Nothing appends any more: background compaction stops too.
		s.compactor.close()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the relay at once: new connections are refused, and every
// session is closed with shutting_down without waiting for the request it
// is handling, whose context is canceled (a push already merged still
// finishes its store append, since a half-written push is worse than a
// late one). Close returns once every session and every goroutine the
// Server started has ended; it waits for Store calls in progress, so it
// returns promptly only if the Store honors canceled contexts, and a
// push's append, which is not canceled, is waited for however long it
// takes. Calling it again returns at once. Close the Store after Close.
//
// Shutdown is the graceful stop and Close the final one: call Shutdown
// with a deadline, then Close.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		sessions, drained := s.stopAccepting()
		for _, sess := range sessions {
			s.goHelper(sess.cut)
		}
		s.closed = true
		s.mu.Unlock()
		s.mem.close() // work waiting for memory gives up at once
		<-drained
		s.helpers.Wait()
		for _, m := range s.endpoints { // no Mount after shutting
			m.e.Close()
		}
		s.compactor.close()
		s.watch.close()
		s.docs.Clear() // no push runs now: free every loaded document
		close(s.releaseStop)
		<-s.releaseDone
	})
	return nil
}
