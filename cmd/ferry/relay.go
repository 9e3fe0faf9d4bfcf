package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/amrepo"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/pgstore"
)

// RelayCommand runs the relay: `ferry relay --data DIR --addr HOST:PORT`,
// devices connecting at ws://HOST:PORT/ws (wss:// with --tls-cert and
// --tls-key). It stops gracefully when ctx ends (SIGINT or SIGTERM): each
// device's current request is finished and answered, then the store is
// closed. On SIGHUP it reloads its apps (see reloadApps).
//
// Everything that can be checked is checked before anything is created:
// the configuration, the certificates, and the listen address, so a relay
// that cannot start leaves no store and no dev app behind.
type RelayCommand struct {
	Stdout, Stderr io.Writer
}

const relayHelp = `Usage: ferry relay [--dev] [--config FILE] [flags]

Runs the relay that devices sync through. With --dev it needs nothing else:
it keeps a ready-made app in DATA/dev-app.json and prints its API key and a
token. In production, list the apps in a configuration file (JSON, see
docs/operations.md); flags override the file.

With --postgres (or "postgres" in the file) the relay keeps its data in
that PostgreSQL database instead of the data folder, and any number of
relays may run on it, behind one load balancer. Give the password in the
configuration file, PGPASSWORD or a password file, not on the command
line, where other users of the machine can read it.

On SIGHUP the relay reads its configuration file again and reloads the
apps' keys, issuers, audiences and grants, without dropping a connection.
SIGINT and SIGTERM stop it gracefully.

The first line printed is always "ferry relay listening on URL".

FERRY_RELAY_CPUPROFILE=FILE writes a CPU profile of the relay's run to
FILE ("%p" in it becomes the process ID), for go tool pprof;
FERRY_RELAY_MEMPROFILE=FILE an allocation profile, written when it stops.
`

// storeDir is where the relay's Badger store lives inside the data folder,
// beside files such as the dev app.
func storeDir(data string) string { return filepath.Join(data, "store") }

func (c *RelayCommand) Run(ctx context.Context, args []string) error {
	cfg, dev, err := c.configure(args)
	if err != nil {
		return err
	}
	logTo := c.Stderr
	if logTo == nil {
		logTo = os.Stderr
	}
	log, err := newLogger(cfg.LogLevel, cfg.LogFormat, logTo)
	if err != nil {
		return err
	}
	stopProfile, err := startRelayProfile()
	if err != nil {
		return err
	}
	defer func() {
		if perr := stopProfile(); perr != nil {
			log.Warn("could not write the CPU profile", "env", relayProfileEnv, "err", perr)
		}
	}()
	var certs *certReloader
	if cfg.TLSCert != "" {
		if certs, err = newCertReloader(cfg.TLSCert, cfg.TLSKey, log); err != nil {
			return fmt.Errorf("relay: %w", err)
		}
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("relay: cannot listen on %s: %w", cfg.Addr, err)
	}
	defer ln.Close() // if a later step fails; Serve closes it otherwise

	apps := cfg.apps()
	var devTok string
	if dev.on {
		app, err := devApp(cfg.Data)
		if err != nil {
			return fmt.Errorf("relay: dev app: %w", err)
		}
		apps = append(apps, app)
		devTok, err = relay.IssueToken(app, relay.TokenRequest{Subject: "dev", TTL: 30 * 24 * time.Hour, Write: []string{"*"}}, time.Now())
		if err != nil {
			return err
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	store, where, err := openStore(ctx, cfg, log, reg)
	if err != nil {
		return err
	}
	defer store.Close()
	// hello and auth check tokens by the clock every later request is
	// checked by: the store's, on a shared database (see
	// relay.StoreClock).
	var now func() time.Time
	if sc, ok := store.(relay.StoreClock); ok {
		now = sc.Now
	}
	auth, err := relay.NewAuthWith(apps, &relay.AuthOptions{Now: now, Logger: log})
	if err != nil {
		return err
	}
	defer auth.Close()
	srv, err := relay.NewServer(&relay.Options{
		Store: store, Auth: auth, Logger: log, RelayID: cfg.RelayID, Limits: cfg.limits(), Registry: reg,
		MaxLeaseTTL: time.Duration(cfg.MaxLeaseTTL), DefaultLeaseTTL: time.Duration(cfg.DefaultLeaseTTL), MaxLag: cfg.MaxLag,
		CompactInterval: time.Duration(cfg.CompactInterval), LogRetention: cfg.LogRetention,
		MaxMemory: cfg.MaxMemory, MemoryWait: time.Duration(cfg.MemoryWait),
		Quotas:         cfg.quotas(),
		AllowedOrigins: allowedOrigins(cfg.AllowedOrigins, dev.allowOrigin, dev.on),
	})
	if err != nil {
		return err
	}
	if err := amrepo.Mount(srv, nil); err != nil {
		srv.Close()
		return err
	}
	memCtx, stopMem := context.WithCancel(ctx)
	defer stopMem()
	goLimit := limitProcessMemory(memCtx, srv.MaxMemory())
	// Registered before the first line is printed: once a script sees
	// it, SIGHUP reloads rather than ends the relay.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	hs, served, scheme := serveHTTP(srv.Handler(), ln, certs)

	url := scheme + "://" + ln.Addr().String() + "/ws"
	// This first line is stable: scripts and tests read the address from it.
	fmt.Fprintf(c.Stdout, "ferry relay listening on %s\n", url)
	fmt.Fprintf(c.Stdout, "memory budget %s (max_memory), documents cached within %s of it, %s\n", sizeText(srv.MaxMemory()), sizeText(srv.DocCacheBytes()), goLimitText(goLimit))
	if dev.on {
		printDevApp(c.Stdout, cfg.Data, scheme, ln.Addr().String(), apps[len(apps)-1], devTok)
	}
	log.Info("relay started", "url", url, "store", where, "apps", len(apps), "incarnation", store.Incarnation())

	for {
		select {
		case err := <-served:
			return fmt.Errorf("relay: %w", err)
		case <-ctx.Done():
			return shutdownRelay(log, srv, hs, store, time.Duration(cfg.ShutdownTimeout))
		case <-hup:
			c.reloadApps(log, auth, args, apps[len(cfg.Apps):])
		}
	}
}

// reloadApps reads the configuration file again and gives its apps (with
// extra, the dev app) to auth: keys, issuers, audiences, grants, leeway
// and API keys change without dropping a connection. Each session's
// token is checked against the new keys at its next request. A file that
// does not load is logged and changes nothing. Everything else in the
// file, quotas included, applies at the next start.
func (c *RelayCommand) reloadApps(log *slog.Logger, auth *relay.Auth, args []string, extra []relay.App) {
	cfg, _, err := c.configure(args)
	if err == nil {
		err = auth.Reload(append(cfg.apps(), extra...))
	}
	if err != nil {
		log.Error("reload on SIGHUP failed; the apps are unchanged", "err", err)
		return
	}
	log.Info("apps reloaded on SIGHUP", "apps", len(cfg.apps())+len(extra))
}

// devFlags are the flags that change what the relay does beyond its
// configuration: --dev, and the origins added to allowed_origins.
type devFlags struct {
	on          bool
	allowOrigin string
}

// configure parses the flags, reads the configuration file, lets the flags
// override it and checks the result, all before anything is created.
func (c *RelayCommand) configure(args []string) (Config, devFlags, error) {
	fs := newFlags("relay")
	configPath := fs.String("config", "", "configuration `FILE` (JSON; see docs/operations.md)")
	data := fs.String("data", "", "data `folder` (default ./ferry-data; in a config file, relative to the file)")
	addr := fs.String("addr", "", "listen address `host:port` (default 127.0.0.1:8080)")
	dev := fs.Bool("dev", false, "development mode: a ready-made app; prints its API key and a token")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (default info)")
	logFormat := fs.String("log-format", "", "text or json (default text)")
	allowOrigin := fs.String("allow-origin", "", "comma-separated `origins` of browser pages allowed to connect (host[:port] patterns, or scheme://host); --dev adds localhost")
	tlsCert := fs.String("tls-cert", "", "serve wss:// with this certificate chain (PEM `file`); reloaded when it changes")
	tlsKey := fs.String("tls-key", "", "the certificate's private key (PEM `file`)")
	postgres := fs.String("postgres", "", "keep the store in the PostgreSQL database at this `url` (postgres://user@host/db, or libpq's key=value form; see docs/operations.md)")
	pgSchema := fs.String("postgres-schema", "", "the `schema` of the PostgreSQL store (default ferry)")
	maxMemory := fs.String("max-memory", "", "the relay's memory `budget`: bytes, or with KiB, MiB or GiB (default 256MiB; see docs/operations.md, Memory)")
	var cfg Config
	if err := parse(fs, args, c.Stdout, relayHelp); err != nil {
		return cfg, devFlags{}, err
	}
	df := devFlags{on: *dev, allowOrigin: *allowOrigin}
	if (*tlsCert == "") != (*tlsKey == "") {
		return cfg, df, usagef(fs, "--tls-cert and --tls-key go together")
	}
	if *configPath != "" {
		var err error
		if cfg, err = loadConfig(*configPath); err != nil {
			return cfg, df, err
		}
	}
	set := func(dst *string, flagVal, def string) {
		if flagVal != "" {
			*dst = flagVal
		}
		if *dst == "" {
			*dst = def
		}
	}
	set(&cfg.Data, *data, "ferry-data")
	set(&cfg.Addr, *addr, "127.0.0.1:8080")
	set(&cfg.LogLevel, *logLevel, "info")
	set(&cfg.LogFormat, *logFormat, "text")
	if *tlsCert != "" {
		cfg.TLSCert, cfg.TLSKey = *tlsCert, *tlsKey
	}
	set(&cfg.Postgres, *postgres, "")
	set(&cfg.PostgresSchema, *pgSchema, "")
	if *maxMemory != "" {
		n, err := parseSize(*maxMemory)
		if err != nil {
			return cfg, df, usagef(fs, "--max-memory: %v", err)
		}
		cfg.MaxMemory = n
	}
	if *dev && cfg.Postgres != "" {
		return cfg, df, usagef(fs, "--dev runs on the embedded store in the data folder: leave out --postgres (and postgres in the config file)")
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = Duration(30 * time.Second)
	}
	// The flags' values, checked like the file's.
	if err := cfg.check(); err != nil {
		return cfg, df, usagef(fs, "%v", err)
	}
	if len(cfg.Apps) == 0 && !*dev {
		return cfg, df, errors.New("relay: no apps configured: list them in a --config file, or run with --dev")
	}
	// Checked without fetching key sets: the relay fetches them as it
	// starts.
	if err := relay.CheckApps(cfg.apps()); err != nil {
		return cfg, df, err
	}
	return cfg, df, nil
}

// serveHTTP serves h on ln, over TLS with certs if given, until the server
// is shut down; served receives Serve's error. scheme is "ws" or "wss".
func serveHTTP(h http.Handler, ln net.Listener, certs *certReloader) (hs *http.Server, served <-chan error, scheme string) {
	hs = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	scheme = "ws"
	if certs != nil {
		hs.TLSConfig = certs.tlsConfig()
		// WebSockets need HTTP/1.1's upgrade; HTTP/2 would only serve
		// /healthz and /metrics.
		hs.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
		scheme = "wss"
	}
	ch := make(chan error, 1)
	go func() {
		if certs != nil {
			ch <- hs.ServeTLS(ln, "", "")
		} else {
			ch <- hs.Serve(ln)
		}
	}()
	return hs, ch, scheme
}

// printDevApp tells the developer how to connect to a --dev relay.
func printDevApp(w io.Writer, data, scheme, addr string, app relay.App, token string) {
	httpScheme := "http"
	if scheme == "wss" {
		httpScheme = "https"
	}
	fmt.Fprintf(w, `
Development mode: one app, "dev", stored in %s.
  API key: %s
  token:   %s
(subject "dev", read and write on every collection, valid 30 days)
Health: %s://%s/healthz   Metrics: %s://%s/metrics
automerge-repo URL (collection todos; pages on localhost may connect):
%s
`, filepath.Join(data, devAppFile), app.APIKey, token, httpScheme, addr, httpScheme, addr,
		automergeURL(scheme, addr, app.APIKey, token, "todos"))
}

// shutdownRelay stops the relay in order: sessions first, each finishing
// its request (an in-flight push is stored and acknowledged) and closed
// with shutting_down; then the HTTP server; then the store.
func shutdownRelay(log *slog.Logger, srv *relay.Server, hs *http.Server, store relay.Store, grace time.Duration) error {
	log.Info("relay shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("sessions did not end in time; cutting them off", "err", err)
	}
	srv.Close()
	if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("http shutdown", "err", err)
	}
	if err := store.Close(); err != nil {
		return fmt.Errorf("relay: closing store: %w", err)
	}
	log.Info("relay stopped")
	return nil
}

// openStore opens the relay's store: the Badger store in the data folder,
// or the PostgreSQL one, whose metrics join reg. where names it for the
// log, never with a password.
func openStore(ctx context.Context, cfg Config, log *slog.Logger, reg *prometheus.Registry) (relay.Store, string, error) {
	if cfg.Postgres == "" {
		st, err := badgerstore.Open(storeDir(cfg.Data), &badgerstore.Options{Logger: log})
		return st, storeDir(cfg.Data), err
	}
	where := "postgres " + pgstore.Describe(cfg.Postgres)
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := pgstore.Open(octx, cfg.Postgres, &pgstore.Options{Schema: cfg.PostgresSchema, MaxConns: int32(cfg.PostgresMaxConns), Logger: log})
	if err != nil {
		return nil, where, fmt.Errorf("relay: opening the store in %s: %w", where, err)
	}
	if err := reg.Register(st.Collector()); err != nil {
		st.Close()
		return nil, where, err
	}
	schema := cfg.PostgresSchema
	if schema == "" {
		schema = "ferry"
	}
	return st, where + " schema " + schema, nil
}

// splitList parses a comma-separated flag value.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// parseSize reads a size in bytes: a whole number, alone or followed by
// KiB, MiB or GiB.
func parseSize(s string) (int64, error) {
	orig, mult := s, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is not a size like 268435456, 512MiB or 2GiB", orig)
	}
	return n * mult, nil
}

// sizeText writes n bytes in MiB, or GiB from 10 GiB.
func sizeText(n int64) string {
	if n >= 10<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
