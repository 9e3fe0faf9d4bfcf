// Package relaytest runs a relay for tests, the way net/http/httptest runs
// an HTTP server: one app, a token for it, and a URL devices connect to,
// on loopback or on an in-memory network that works inside a
// testing/synctest bubble. It serves what ferry relay serves: /ws, and
// automerge-repo's /automerge (package relay/amrepo).
package relaytest

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/amrepo"
	"github.com/ferrysync/ferry/relay/memstore"
)

// Options configure Start. A nil *Options means the defaults.
type Options struct {
	// Store holds the relay's data. Default: a memstore.Store. Close
	// closes it either way.
	Store relay.Store
	// Now is the relay's clock, for tokens and leases. Default time.Now.
	// Every session calls it, so it must be safe for concurrent use.
	Now func() time.Time
	// App, if set, adjusts the relay's app before its Auth is made (its
	// keys, issuer, grants). Keep its Secret: Token is signed with it.
	App func(*relay.App)
	// Relay carries any other relay setting; its Store, Auth and Now are
	// set by Start. PingInterval defaults to off (-1).
	Relay relay.Options
	// Pipe serves the relay on an in-memory network instead of loopback:
	// connect through HTTPClient. Goroutines blocked on it are durably
	// blocked, so a relay and its devices can run inside a synctest
	// bubble, with its fake clock.
	Pipe bool
	// Conn, if set, wraps each connection a device makes on the in-memory
	// network (its client end), to delay or cut it. It is called in the
	// goroutine that dials, from several at once when devices connect
	// together.
	Conn func(net.Conn) net.Conn
}

// Relay is a running test relay with one app, "test". Its methods are
// safe for concurrent use, but Restart changes Server and Store: read them
// only from the goroutine that calls it.
type Relay struct {
	URL    string // ws://.../ws
	Server *relay.Server
	Store  relay.Store
	App    relay.App
	Auth   *relay.Auth
	// Token reads and writes every collection, for an hour of the relay's
	// clock from Start.
	Token string
	// HTTPClient dials the relay; required with Options.Pipe, and works
	// on loopback too.
	HTTPClient *http.Client

	hs        *httptest.Server
	handler   atomic.Pointer[http.Handler] // the current server's
	opts      Options                      // as Start was given them, with defaults
	pipe      *pipeListener
	closeOnce sync.Once
}

// Start starts a relay; t.Cleanup closes it.
func Start(t testing.TB, o *Options) *Relay {
	t.Helper()
	var opts Options
	if o != nil {
		opts = *o
	}
	if opts.Store == nil {
		opts.Store = memstore.New()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	r := &Relay{Store: opts.Store, App: relay.NewApp("test"), opts: opts}
	if opts.App != nil {
		opts.App(&r.App)
	}
	var err error
	if r.Auth, err = relay.NewAuth([]relay.App{r.App}, opts.Now); err != nil {
		t.Fatal(err)
	}
	r.Server = r.newServer(t, opts.Store, nil)
	r.hs = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		(*r.handler.Load()).ServeHTTP(w, req)
	}))
	if opts.Pipe {
		r.pipe = newPipeListener(opts.Conn)
		r.hs.Listener.Close()
		r.hs.Listener = r.pipe
		r.HTTPClient = &http.Client{Transport: &http.Transport{DialContext: r.pipe.dial}}
	} else {
		r.HTTPClient = &http.Client{}
	}
	r.hs.Start()
	r.URL = "ws" + strings.TrimPrefix(r.hs.URL, "http") + "/ws"
	r.Token = r.IssueToken(t, relay.TokenRequest{Subject: "test", TTL: time.Hour, Write: []string{"*"}}, opts.Now())
	t.Cleanup(r.Close)
	return r
}

// newServer makes a server over store, and routes the URL to it.
func (r *Relay) newServer(t testing.TB, store relay.Store, tweak func(*relay.Options)) *relay.Server {
	t.Helper()
	ro := r.opts.Relay
	ro.Store, ro.Auth, ro.Now = store, r.Auth, r.opts.Now
	if ro.PingInterval == 0 {
		ro.PingInterval = -1
	}
	if tweak != nil {
		tweak(&ro)
	}
	srv, err := relay.NewServer(&ro)
	if err != nil {
		t.Fatal(err)
	}
	// As ferry relay serves it: /ws, and automerge-repo's /automerge.
	if err := amrepo.Mount(srv, nil); err != nil {
		srv.Close()
		t.Fatal(err)
	}
	h := srv.Handler()
	r.handler.Store(&h)
	return srv
}

// Restart replaces the relay's server with a new one over store, at the
// same URL, with the same app and clock: a restarted relay, or one
// restored from a backup when store has another incarnation. The old
// server's sessions end, and its store is closed. tweak, if not nil,
// changes the new server's options (its limits, say).
func (r *Relay) Restart(t testing.TB, store relay.Store, tweak func(*relay.Options)) {
	t.Helper()
	old, oldStore := r.Server, r.Store
	r.Server, r.Store = r.newServer(t, store, tweak), store
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old.Shutdown(ctx)
	old.Close()
	oldStore.Close()
}

// IssueToken signs a token of the relay's app.
func (r *Relay) IssueToken(t testing.TB, req relay.TokenRequest, now time.Time) string {
	t.Helper()
	tok, err := relay.IssueToken(r.App, req, now)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// Close stops the relay: sessions end, then the listener, then the store.
// It is safe to call more than once.
func (r *Relay) Close() {
	r.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r.Server.Shutdown(ctx)
		r.Server.Close() // ends what Shutdown leaves running (a shared store's watch)
		r.hs.Close()
		if t, ok := r.HTTPClient.Transport.(*http.Transport); ok {
			t.CloseIdleConnections()
		}
		r.Store.Close()
		r.Auth.Close()
	})
}

// PipeNetwork returns a listener on an in-memory network and the dial
// function (for an http.Transport's DialContext) that connects to it, as
// Options.Pipe serves a relay: no sockets, no I/O outside the process, so
// a server on it runs inside a synctest bubble. Closing the listener ends
// the network.
func PipeNetwork() (net.Listener, func(ctx context.Context, network, addr string) (net.Conn, error)) {
	l := newPipeListener(nil)
	return l, l.dial
}

// pipeListener is a net.Listener whose connections are in-memory pipes
// (see pipe.go): no sockets, no I/O outside the process.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	wrap  func(net.Conn) net.Conn
}

func newPipeListener(wrap func(net.Conn) net.Conn) *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{}), wrap: wrap}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (l *pipeListener) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	client, server := newPipe()
	select {
	case l.conns <- server:
		if l.wrap != nil {
			return l.wrap(client), nil
		}
		return client, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "relay.test:80" }
