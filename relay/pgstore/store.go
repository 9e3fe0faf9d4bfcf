package pgstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrysync/ferry/relay"
)

// Options configure a Store. A nil *Options, and every zero field, means
// the default.
type Options struct {
	// Schema is the PostgreSQL schema holding the store's tables, created
	// if missing. Several stores (a production one and a staging one, say)
	// can share a database in schemas of their own. Default "ferry".
	Schema string
	// MaxConns bounds the store's connection pool. Default 10. Each relay
	// also holds one more connection, for LISTEN.
	MaxConns int32
	// RetryTimeout bounds how long one call retries failures that leave
	// nothing done, or whose outcome the retry resolves (a dropped
	// connection, a server restarting, a serialization failure). Default
	// 30 s. Each attempt ends by then too, so a connection that hangs is
	// given up on.
	RetryTimeout time.Duration
	// Logger receives warnings (a new incarnation, a lost LISTEN
	// connection). Default: discard.
	Logger *slog.Logger

	// Set by tests (export_test.go): how connections are dialed, and the
	// local clock.
	dial       func(ctx context.Context, network, addr string) (net.Conn, error)
	localClock func() time.Time
}

func (o *Options) withDefaults() Options {
	var v Options
	if o != nil {
		v = *o
	}
	if v.Schema == "" {
		v.Schema = "ferry"
	}
	if v.MaxConns <= 0 {
		v.MaxConns = 10
	}
	if v.RetryTimeout <= 0 {
		v.RetryTimeout = 30 * time.Second
	}
	if v.Logger == nil {
		v.Logger = slog.New(slog.DiscardHandler)
	}
	if v.localClock == nil {
		v.localClock = time.Now
	}
	return v
}

// Store is a relay.Store on PostgreSQL. Every method is safe for concurrent
// use, from any number of goroutines and relay processes.
type Store struct {
	opts        Options
	pool        *pgxpool.Pool
	incarnation string
	channel     string // the NOTIFY channel of this schema
	tag         string // this Store's mark on its notifications
	clock       *dbClock
	metrics     *metrics
	colls       *collCache
	logs        *logCoalescer

	// base is canceled by Close, ending the background goroutines.
	base   context.Context
	cancel context.CancelFunc
	bg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	inflight sync.WaitGroup

	events   *events
	notifier *notifier
}

var _ relay.Store = (*Store)(nil)
var _ relay.StoreClock = (*Store)(nil)
var _ relay.StoreEvents = (*Store)(nil)
var _ relay.StoreRecordHeads = (*Store)(nil)

// ErrConfig means the connection string or the options are not usable.
var ErrConfig = errors.New("pgstore: bad configuration")

// Open connects to the database named by connString (a PostgreSQL URL or
// key=value string, as libpq takes; PGPASSWORD and a password file work
// too), creates or migrates the store's schema, and starts listening for
// other relays' notifications. ctx bounds the opening only.
//
// Errors never hold the password.
func Open(ctx context.Context, connString string, o *Options) (*Store, error) {
	opts := o.withDefaults()
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		// pgconn words parse errors without the password.
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := relay.CheckName("schema", opts.Schema); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if len(opts.Schema) > 63 || !utf8.ValidString(opts.Schema) {
		// PostgreSQL would cut a longer name to 63 bytes, silently.
		return nil, fmt.Errorf("%w: schema %q: want at most 63 bytes of UTF-8", ErrConfig, opts.Schema)
	}
	cfg.MaxConns = opts.MaxConns
	cfg.MinConns = 0
	cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{opts.Schema}.Sanitize()
	// Every statement of the store finds its rows by key, and is planned
	// for that once per connection: left to choose, PostgreSQL re-planned
	// the append's base check on every call (its planning cost more than
	// running it), its estimate swayed by the arrays' lengths.
	cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_generic_plan"
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		// Names the relay's sessions in pg_stat_activity, by schema.
		name := "ferry-relay/" + opts.Schema
		cfg.ConnConfig.RuntimeParams["application_name"] = name[:min(len(name), 63)]
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 10 * time.Second
	}
	if opts.dial != nil {
		cfg.ConnConfig.DialFunc = opts.dial
	}
	base, cancel := context.WithCancel(context.Background())
	s := &Store{
		opts:    opts,
		channel: channelOf(opts.Schema),
		tag:     randomTag(),
		metrics: newMetrics(),
		colls:   newCollCache(),
		base:    base,
		cancel:  cancel,
	}
	s.clock = newDBClock(opts.localClock)
	s.logs = newLogCoalescer(func(f func()) {
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			f()
		}()
	})
	s.pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	fail := func(err error) (*Store, error) {
		s.cancel()
		s.pool.Close()
		return nil, err
	}
	if s.incarnation, err = s.migrate(ctx); err != nil {
		return fail(err)
	}
	if err := s.clock.sync(ctx, s.pool); err != nil {
		return fail(fmt.Errorf("pgstore: reading the database's clock: %w", err))
	}
	if s.events, err = s.startEvents(ctx, cfg.ConnConfig); err != nil {
		return fail(err)
	}
	s.notifier = s.startNotifier()
	s.bg.Add(1)
	go s.janitor()
	return s, nil
}

// Incarnation implements relay.Store. It is read at Open: a store restored
// into another database (pg_dump and pg_restore) gets a new one the first
// time a relay opens it; see docs/operations.md for restores that keep the
// database's identity.
func (s *Store) Incarnation() string { return s.incarnation }

// Now is the database's clock, as read at Open and every ten seconds since,
// advanced by this machine's monotonic clock in between: every relay on the
// database reads the same time, within the round trip of a query, whatever
// this machine's own clock says. It implements relay.StoreClock.
func (s *Store) Now() time.Time { return s.clock.now() }

// Close waits for the calls in progress, stops the store's goroutines and
// closes its connections. Calls made after Close begins return
// relay.ErrStoreClosed. Calling it again does nothing.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.inflight.Wait()
	// Notifications of the last appends still go out.
	s.notifier.close()
	s.cancel()
	s.events.close()
	s.bg.Wait()
	s.pool.Close()
	return nil
}

// begin admits a call: nil, and the caller must call s.inflight.Done, or
// an error and nothing to undo.
func (s *Store) begin(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return relay.ErrStoreClosed
	}
	s.inflight.Add(1)
	return nil
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// run does one call of the store: admitted, then fn attempted until it
// succeeds, fails for good, or RetryTimeout has passed. fn must be safe to
// run again after any failure (see retryable); op names the call in
// metrics and errors.
func (s *Store) run(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	defer s.inflight.Done()
	return s.retry(ctx, op, fn)
}

func (s *Store) retry(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	return s.retryWithin(ctx, op, s.opts.RetryTimeout, fn)
}

func (s *Store) retryWithin(ctx context.Context, op string, limit time.Duration, fn func(ctx context.Context) error) error {
	deadline := time.Now().Add(limit)
	wait := 5 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithDeadline(ctx, deadline)
		err := fn(actx)
		cancel()
		if err == nil {
			return nil
		}
		reason := retryable(err)
		if reason == "" || ctx.Err() != nil {
			return fmt.Errorf("pgstore: %s: %w", op, err)
		}
		// Closing stops retries of what certainly did nothing; one whose
		// outcome is unknown is retried still, so that the caller learns it.
		if s.isClosed() && pgconn.SafeToRetry(err) {
			return relay.ErrStoreClosed
		}
		if !time.Now().Add(wait).Before(deadline) {
			s.metrics.giveUps.WithLabelValues(op).Inc()
			return fmt.Errorf("pgstore: %s: still failing after %d attempts in %v: %w", op, attempt, limit, err)
		}
		s.metrics.retries.WithLabelValues(op, reason).Inc()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("pgstore: %s: %w (retrying after: %w)", op, ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// retryable says why err may be retried ("" if it may not): the statement
// was never sent, the transaction was rolled back by the server
// (serialization failure, deadlock), or the connection or server went away,
// leaving the outcome unknown. Every call of this package is idempotent or
// made so (Append's id), so the unknown outcome is resolved by the retry.
func retryable(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "40001":
			return "serialization"
		case pe.Code == "40P01":
			return "deadlock"
		case pe.Code == "55P03":
			return "lock"
		case len(pe.Code) == 5 && pe.Code[:2] == "08":
			return "connection"
		case pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03", pe.Code == "53300":
			// Shutting down, crashed, starting up, too many connections.
			return "server"
		}
		return ""
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled):
		return ""
	case pgconn.SafeToRetry(err):
		return "not_sent"
	case errors.As(err, &ce):
		return "connect"
	case pgconn.Timeout(err), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.As(err, &ne), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return "connection"
	}
	return ""
}

// Describe names the database a connection string points to, without its
// password: "user@host:port/database", for logs.
func Describe(connString string) string {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return "(a connection string that does not parse)"
	}
	return fmt.Sprintf("%s@%s/%s", cfg.User, net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))), cfg.Database)
}

// channelOf names a schema's NOTIFY channel: "ferry:" and the schema, or,
// past PostgreSQL's 63 bytes for a name, a hash of the schema in its place.
func channelOf(schema string) string {
	if ch := "ferry:" + schema; len(ch) <= 63 {
		return ch
	}
	sum := sha256.Sum256([]byte(schema))
	return "ferry:" + hex.EncodeToString(sum[:16])
}
