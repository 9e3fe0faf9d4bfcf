package relay

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// fakeClock is a settable clock for lease and token expiry.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type testRelay struct {
	t      *testing.T
	srv    *Server
	http   *httptest.Server
	url    string
	clock  *fakeClock
	store  Store
	apps   map[string]App
	tokens map[string]string // app ID -> a read/write-all token
}

// newTestRelay starts a relay on loopback with two apps, "shop" and "rival".
func newTestRelay(t *testing.T, store Store, tweak func(*Options)) *testRelay {
	t.Helper()
	return newTestRelayOn(t, store, tweak, nil)
}

// newTestRelayOn is newTestRelay with the relay's listener wrapped by wrap,
// unless wrap is nil.
func newTestRelayOn(t *testing.T, store Store, tweak func(*Options), wrap func(net.Listener) net.Listener) *testRelay {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
	apps := map[string]App{"shop": NewApp("shop"), "rival": NewApp("rival")}
	auth, err := NewAuth([]App{apps["shop"], apps["rival"]}, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	o := &Options{Store: store, Auth: auth, Now: clock.Now, PingInterval: -1}
	if tweak != nil {
		tweak(o)
	}
	srv, err := NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	if wrap != nil {
		hs.Listener = wrap(hs.Listener)
	}
	hs.Start()
	tr := &testRelay{t: t, srv: srv, http: hs, url: "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws",
		clock: clock, store: store, apps: apps, tokens: map[string]string{}}
	for id := range apps {
		tr.tokens[id] = tr.token(id, TokenRequest{Subject: "user-" + id, TTL: time.Hour, Write: []string{"*"}})
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
		hs.Close()
		store.Close()
	})
	return tr
}

func (tr *testRelay) token(app string, req TokenRequest) string {
	tok, err := IssueToken(tr.apps[app], req, tr.clock.Now())
	if err != nil {
		tr.t.Fatal(err)
	}
	return tok
}

// dial connects and says hello; the error is the relay's answer.
func (tr *testRelay) dial(apiKey, token, replica string) (*transport.Client, *transport.Welcome, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := transport.Dial(ctx, tr.url, &transport.Options{PingInterval: -1})
	if err != nil {
		return nil, nil, err
	}
	c := transport.NewClient(conn, nil)
	var w transport.Welcome
	err = c.Call(ctx, &transport.Hello{APIKey: apiKey, Token: token, ReplicaID: replica, Versions: transport.SupportedVersions()}, &w)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	tr.t.Cleanup(func() { c.Close() })
	return c, &w, nil
}

// client dials as a read/write-all user of app.
func (tr *testRelay) client(app string) *transport.Client {
	tr.t.Helper()
	c, _, err := tr.dial(tr.apps[app].APIKey, tr.tokens[app], "replica-"+app)
	if err != nil {
		tr.t.Fatal(err)
	}
	return c
}

func call[R any, PR interface {
	*R
	transport.Body
}](t testing.TB, c *transport.Client, req transport.Body) (*R, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp := PR(new(R))
	err := c.Call(ctx, req, resp)
	return (*R)(resp), err
}

func mustCall[R any, PR interface {
	*R
	transport.Body
}](t testing.TB, c *transport.Client, req transport.Body) *R {
	t.Helper()
	r, err := call[R, PR](t, c, req)
	if err != nil {
		t.Fatalf("%s: %v", req.MessageType(), err)
	}
	return r
}

// editor makes Automerge changes as a device would.
type editor struct {
	t   testing.TB
	doc *crdt.Doc
	at  crdt.Heads
}

func newEditor(t testing.TB, actor string) *editor {
	d, err := crdt.New(actor)
	if err != nil {
		t.Fatal(err)
	}
	return &editor{t: t, doc: d}
}

// edit sets fields and returns the new changes since the last edit.
func (e *editor) edit(fields map[string]any) []byte {
	e.t.Helper()
	if err := e.doc.Put(fields); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.doc.Commit("", time.Time{}); err != nil {
		e.t.Fatal(err)
	}
	b, err := e.doc.ChangesSince(e.at)
	if err != nil {
		e.t.Fatal(err)
	}
	e.at = e.doc.Heads()
	return b
}

func pushOf(coll string, fence uint64, recs ...transport.RecordChanges) *transport.Push {
	return &transport.Push{Collection: coll, Fence: fence, Records: recs}
}

func rec(id string, data []byte) transport.RecordChanges {
	return transport.RecordChanges{Record: id, Data: data}
}

// fieldsAfter loads changes (or snapshots) into a fresh document.
func fieldsAfter(t testing.TB, parts ...[]byte) map[string]any {
	t.Helper()
	d, _ := crdt.New("")
	for _, p := range parts {
		if _, err := d.Import(p); err != nil {
			t.Fatal(err)
		}
	}
	f, err := d.Fields()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// smallSendBuffers makes the relay's sockets buffer little of what it
// sends, so a device that stops reading blocks the relay's writes after a
// few KiB instead of the megabytes loopback would otherwise take.
func smallSendBuffers(l net.Listener) net.Listener { return smallBufListener{l} }

type smallBufListener struct{ net.Listener }

func (l smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

// rawSubscriber connects as shop's read/write user on a connection that
// buffers little of what it receives, subscribes to coll, and returns the
// Conn, which nothing reads from then on unless the test does.
func (tr *testRelay) rawSubscriber(coll string) *transport.Conn {
	tr.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dialer := &net.Dialer{}
	ht := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4096)
		}
		return c, err
	}}
	tr.t.Cleanup(ht.CloseIdleConnections)
	conn, err := transport.Dial(ctx, tr.url, &transport.Options{PingInterval: -1, Dial: &websocket.DialOptions{HTTPClient: &http.Client{Transport: ht}}})
	if err != nil {
		tr.t.Fatal(err)
	}
	tr.t.Cleanup(func() { conn.Close() })
	shop := tr.apps["shop"]
	for id, req := range []transport.Body{
		&transport.Hello{APIKey: shop.APIKey, Token: tr.tokens["shop"], ReplicaID: "raw", Versions: transport.SupportedVersions()},
		&transport.Subscribe{Collection: coll},
	} {
		if err := conn.SendBody(ctx, uint64(id+1), req); err != nil {
			tr.t.Fatal(err)
		}
		resp, err := conn.Recv(ctx)
		if err != nil {
			tr.t.Fatal(err)
		}
		if resp.Type == transport.TypeError {
			tr.t.Fatalf("%s: relay answered %v", req.MessageType(), resp)
		}
	}
	return conn
}

// metric returns the line of the relay's /metrics page that starts with
// name and a space.
func (tr *testRelay) metric(name string) string {
	tr.t.Helper()
	resp, err := http.Get(tr.http.URL + "/metrics")
	if err != nil {
		tr.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tr.t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, name+" ") {
			return line
		}
	}
	return ""
}
