package relay_test

import (
	"context"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/fxamacker/cbor/v2"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/amrepo"
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
	srv    *relay.Server
	http   *httptest.Server
	url    string
	clock  *fakeClock
	store  relay.Store
	apps   map[string]relay.App
	tokens map[string]string // app ID -> a read/write-all token
}

// newTestRelay starts a relay on loopback with two apps, "shop" and "rival".
func newTestRelay(t *testing.T, store relay.Store, tweak func(*relay.Options)) *testRelay {
	t.Helper()
	return newTestRelayOn(t, store, tweak, nil)
}

// newTestRelayOn is newTestRelay with the relay's listener wrapped by wrap,
// unless wrap is nil.
func newTestRelayOn(t *testing.T, store relay.Store, tweak func(*relay.Options), wrap func(net.Listener) net.Listener) *testRelay {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
	apps := map[string]relay.App{"shop": relay.NewApp("shop"), "rival": relay.NewApp("rival")}
	auth, err := relay.NewAuth([]relay.App{apps["shop"], apps["rival"]}, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	o := &relay.Options{Store: store, Auth: auth, Now: clock.Now, PingInterval: -1}
	if tweak != nil {
		tweak(o)
	}
	srv, err := relay.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	// Served as ferry relay serves it, automerge-repo's endpoint included.
	if err := amrepo.Mount(srv, nil); err != nil {
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
		tr.tokens[id] = tr.token(id, relay.TokenRequest{Subject: "user-" + id, TTL: time.Hour, Write: []string{"*"}})
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

func (tr *testRelay) token(app string, req relay.TokenRequest) string {
	tok, err := relay.IssueToken(tr.apps[app], req, tr.clock.Now())
	if err != nil {
		tr.t.Fatal(err)
	}
	return tok
}

// dial connects and says hello; the error is the relay's answer.
func (tr *testRelay) dial(apiKey, token, replica string) (*transport.Client, *transport.Welcome, error) {
	return tr.dialWith(&transport.Options{PingInterval: -1}, apiKey, token, replica)
}

// dialWith is dial with the device's transport options.
func (tr *testRelay) dialWith(o *transport.Options, apiKey, token, replica string) (*transport.Client, *transport.Welcome, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := transport.Dial(ctx, tr.url, o)
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
	return tr.clientWith(app, "replica-"+app, &transport.Options{PingInterval: -1})
}

// clientWith dials as a read/write-all user of app, as replica, with the
// device's transport options.
func (tr *testRelay) clientWith(app, replica string, o *transport.Options) *transport.Client {
	tr.t.Helper()
	c, _, err := tr.dialWith(o, tr.apps[app].APIKey, tr.tokens[app], replica)
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

func pushOf(coll string, fence uint64, recs ...transport.RecordChanges) *transport.Push {
	return &transport.Push{Collection: coll, Fence: fence, Records: recs}
}

func rec(id string, data []byte) transport.RecordChanges {
	return transport.RecordChanges{Record: id, Data: data}
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

var bsColl = relay.Coll{Tenant: "app1", Collection: "notes"}

// bsEntry is an entry of made-up changes for record, at version v.
func bsEntry(record string, base crdt.Heads, v string) relay.Entry {
	return relay.Entry{
		Record:  record,
		Base:    base,
		Changes: []byte("changes " + record + "@" + v),
		Heads:   crdt.Heads{crdt.Hash(sha256.Sum256([]byte(record + "@" + v)))},
	}
}

func bsAppend(t *testing.T, s relay.Store, fence uint64, now time.Time, es ...relay.Entry) uint64 {
	t.Helper()
	h, err := s.Append(context.Background(), bsColl, fence, now, es)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	return h
}

// amAnswer is the relay's answer to an automerge-repo join.
type amAnswer struct {
	Type    string `cbor:"type"`
	Message string `cbor:"message"`
}

// joinAM connects to /automerge/todos as an automerge-repo peer of shop's
// read/write user, joins, and returns the connection and the relay's
// answer (peer, or error).
func (tr *testRelay) joinAM(t *testing.T, peer string) (*websocket.Conn, amAnswer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q := url.Values{"api_key": {tr.apps["shop"].APIKey}, "token": {tr.tokens["shop"]}}
	ws, _, err := websocket.Dial(ctx, strings.Replace(tr.url, "/ws", "/automerge/todos", 1)+"?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	join, err := cbor.Marshal(map[string]any{"type": "join", "senderId": peer, "peerMetadata": map[string]any{}, "supportedProtocolVersions": []string{"1"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Write(ctx, websocket.MessageBinary, join); err != nil {
		t.Fatal(err)
	}
	_, b, err := ws.Read(ctx)
	if err != nil {
		t.Fatalf("no answer to join: %v", err)
	}
	var m amAnswer
	if err := cbor.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return ws, m
}
