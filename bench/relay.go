package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/amrepo"
	"github.com/ferrysync/ferry/relay/badgerstore"
)

// Mode says where the relay under test runs.
type Mode int

const (
	// InProcess runs a relay in this process: a Badger store on disk,
	// durable, as `ferry relay` runs it.
	InProcess Mode = iota
	// Child runs `ferry relay` as a child process (Target.Command).
	Child
	// External uses a running relay (Target.URL, APIKey, Token).
	External
)

// Target is the relay the workloads sync through.
type Target struct {
	Mode Mode

	// External: the relay's device URL (ws://host:port/ws), an app's API
	// key, and a token of that app that may write every collection ("*").
	// Its /metrics is read beside /ws.
	URL, APIKey, Token string

	// Child: returns the command that runs `ferry relay` with args (which
	// set --config, --data and --addr). The relay must print
	// "ferry relay listening on ws://..." as its first line on stdout and
	// stop cleanly on SIGTERM.
	Command func(ctx context.Context, args []string) *exec.Cmd

	// Postgres: the database's connection string, and how many relays
	// (default 1) run on it; Command makes them, as for Child.
	Postgres string
	Relays   int
}

// String names the target for results.
func (t Target) String() string {
	switch t.Mode {
	case Child:
		return "child"
	case External:
		return t.URL
	case Postgres:
		return fmt.Sprintf("postgres x%d", max(t.Relays, 1))
	}
	return "in-process"
}

// relayEnv is one workload's relay, with its meters.
type relayEnv struct {
	mode          Mode
	url           string // for devices
	metricsURL    string
	apiKey, token string
	wire          *counter // bytes between devices and the relay; nil for External
	mem           memProbe
	stop          func() error
	// direct is a child relay's own device URL, behind the proxy;
	// counted says clients connected to it counting their own bytes
	// (dialCounted), and directDevices that replicas connected to it
	// without the proxy (deviceURL).
	direct        string
	counted       bool
	directDevices bool
}

// startRelay starts (or, for External, connects the meters to) a relay
// with its data under dir.
func startRelay(ctx context.Context, t Target, dir string) (*relayEnv, error) {
	switch t.Mode {
	case InProcess:
		// The relay's goroutines, and every one they start, carry the
		// label side=relay, so that a CPU profile of the run (ferry bench
		// --cpuprofile) tells the relay's CPU from the clients': go tool
		// pprof -tagfocus side=relay, or -tagignore side=relay.
		var e *relayEnv
		var err error
		pprof.Do(context.Background(), pprof.Labels("side", "relay"), func(context.Context) {
			e, err = startInProcess(dir)
		})
		return e, err
	case Child:
		if t.Command == nil {
			return nil, errors.New("bench: a child relay needs Target.Command")
		}
		return startChild(ctx, t, dir)
	case Postgres:
		if t.Command == nil || t.Postgres == "" {
			return nil, errors.New("bench: relays on PostgreSQL need Target.Command and Target.Postgres")
		}
		return startPostgres(ctx, t, dir)
	case External:
		if t.URL == "" || t.APIKey == "" || t.Token == "" {
			return nil, errors.New("bench: an external relay needs a URL, an API key and a token")
		}
		mu, err := metricsURL(t.URL)
		if err != nil {
			return nil, err
		}
		e := &relayEnv{mode: External, url: t.URL, metricsURL: mu, apiKey: t.APIKey, token: t.Token, stop: func() error { return nil }}
		e.mem = newScrapeProbe(mu)
		return e, nil
	}
	return nil, fmt.Errorf("bench: unknown relay mode %d", t.Mode)
}

func (e *relayEnv) close() error {
	if e.mem != nil {
		e.mem.close()
	}
	return e.stop()
}

// newApp makes the app and token of a relay the bench starts.
func newApp() (relay.App, string, error) {
	app := relay.NewApp("bench")
	tok, err := relay.IssueToken(app, relay.TokenRequest{Subject: "bench", TTL: 48 * time.Hour, Write: []string{"*"}}, time.Now())
	return app, tok, err
}

func startInProcess(dir string) (*relayEnv, error) {
	app, tok, err := newApp()
	if err != nil {
		return nil, err
	}
	auth, err := relay.NewAuth([]relay.App{app}, nil)
	if err != nil {
		return nil, err
	}
	so := &badgerstore.Options{GCInterval: -1}
	if h := testHooks.openedRelay; h != nil {
		h(so)
	}
	store, err := badgerstore.Open(filepath.Join(dir, "relay"), so)
	if err != nil {
		return nil, err
	}
	srv, err := relay.NewServer(&relay.Options{Store: store, Auth: auth})
	if err == nil {
		// As ferry relay serves it, automerge-repo's endpoint included.
		if err = amrepo.Mount(srv, nil); err != nil {
			srv.Close()
		}
	}
	if err != nil {
		store.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		store.Close()
		return nil, err
	}
	// Metrics are scraped on a listener of their own, so the scrapes are
	// not counted as device traffic.
	mln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		ln.Close()
		store.Close()
		return nil, err
	}
	wire := &counter{}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); hs.Serve(&countingListener{Listener: ln, c: wire}) }()
	go func() { defer wg.Done(); hs.Serve(mln) }()
	e := &relayEnv{
		mode: InProcess, url: "ws://" + ln.Addr().String() + "/ws", metricsURL: "http://" + mln.Addr().String() + "/metrics",
		apiKey: app.APIKey, token: tok, wire: wire, mem: newSelfProbe(),
	}
	e.stop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		serr := srv.Shutdown(ctx)
		herr := hs.Shutdown(ctx)
		wg.Wait()
		if errors.Is(herr, http.ErrServerClosed) {
			herr = nil
		}
		return errors.Join(serr, herr, store.Close())
	}
	return e, nil
}

// childConfig is the part of `ferry relay`'s configuration file the bench
// writes (see docs/operations.md).
type childConfig struct {
	Apps     []relay.App `json:"apps"`
	LogLevel string      `json:"log_level"`
}

// startChild runs a relay process on its embedded store in dir, devices
// reaching it through a byte-counting proxy.
func startChild(ctx context.Context, t Target, dir string) (*relayEnv, error) {
	app, tok, err := newApp()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	b, _ := json.Marshal(childConfig{Apps: []relay.App{app}, LogLevel: "warn"})
	cfgPath := filepath.Join(dir, "relay.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		return nil, err
	}
	child, err := startRelayProcess(ctx, t, cfgPath, filepath.Join(dir, "relay"))
	if err != nil {
		return nil, err
	}
	px, err := newProxy(child.host)
	if err != nil {
		child.kill()
		return nil, err
	}
	mem, err := newChildProbe(child.cmd.Process.Pid)
	if err != nil {
		px.close()
		child.kill()
		return nil, err
	}
	e := &relayEnv{
		mode: Child, url: "ws://" + px.addr() + child.path, metricsURL: "http://" + child.host + "/metrics",
		apiKey: app.APIKey, token: tok, wire: px.c, mem: mem, direct: "ws://" + child.host + child.path,
	}
	e.stop = func() error {
		px.close()
		return child.stop()
	}
	return e, nil
}

// relayProcess is one `ferry relay` child process.
type relayProcess struct {
	cmd     *exec.Cmd
	host    string // host:port of its listener
	path    string // of its device URL
	stderr  *tail
	drained chan struct{}
}

func (c *relayProcess) kill() {
	c.cmd.Process.Kill()
	<-c.drained
	c.cmd.Wait()
}

// stop ends the relay with SIGTERM, as a clean shutdown.
func (c *relayProcess) stop() error {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.drained:
	case <-time.After(60 * time.Second):
		c.cmd.Process.Kill()
		<-c.drained
	}
	if err := c.cmd.Wait(); err != nil {
		return fmt.Errorf("bench: relay exited with %v; stderr: %s", err, c.stderr)
	}
	return nil
}

// startRelayProcess starts t.Command with the config file and data
// folder, and reads its listening URL from its first line.
func startRelayProcess(ctx context.Context, t Target, cfgPath, data string) (*relayProcess, error) {
	cmd := t.Command(ctx, []string{"--config", cfgPath, "--data", data, "--addr", "127.0.0.1:0"})
	c := &relayProcess{cmd: cmd, stderr: &tail{max: 8 << 10}, drained: make(chan struct{})}
	cmd.Stderr = c.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start relay: %w", err)
	}
	lines := bufio.NewReader(out)
	first := make(chan string, 1)
	go func() {
		defer close(c.drained)
		line, _ := lines.ReadString('\n')
		first <- line
		lines.WriteTo(discard{})
	}()
	var line string
	select {
	case line = <-first:
	case <-time.After(60 * time.Second):
		c.kill()
		return nil, fmt.Errorf("bench: relay did not start within a minute; stderr: %s", c.stderr)
	}
	const prefix = "ferry relay listening on "
	if !strings.HasPrefix(line, prefix) {
		c.kill()
		return nil, fmt.Errorf("bench: relay's first line is %q, want %q...; stderr: %s", line, prefix, c.stderr)
	}
	u, err := url.Parse(strings.TrimSpace(strings.TrimPrefix(line, prefix)))
	if err != nil {
		c.kill()
		return nil, fmt.Errorf("bench: relay URL: %w", err)
	}
	c.host, c.path = u.Host, u.Path
	return c, nil
}

func metricsURL(wsURL string) (string, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return "", fmt.Errorf("bench: relay URL %q: %w", wsURL, err)
	}
	switch u.Scheme {
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	default:
		return "", fmt.Errorf("bench: relay URL %q: want ws:// or wss://", wsURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/ws") + "/metrics"
	return u.String(), nil
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.b))
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
