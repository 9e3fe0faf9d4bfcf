package amrepo

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/transport"
)

// fakeClock is a settable clock for token expiry.
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

// testOptions configure a test relay: the relay's, and the endpoint's.
type testOptions struct {
	relay.Options
	Automerge Options
}

// testRelay is a relay on loopback serving /ws and, mounted, /automerge,
// with two apps, "shop" and "rival".
type testRelay struct {
	t      *testing.T
	srv    *relay.Server
	am     *Endpoint
	url    string // ws://.../ws
	clock  *fakeClock
	store  relay.Store
	apps   map[string]relay.App
	tokens map[string]string // app ID -> a read/write-all token
}

func newTestRelay(t *testing.T, store relay.Store, tweak func(*testOptions)) *testRelay {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
	apps := map[string]relay.App{"shop": relay.NewApp("shop"), "rival": relay.NewApp("rival")}
	auth, err := relay.NewAuth([]relay.App{apps["shop"], apps["rival"]}, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	o := &testOptions{Options: relay.Options{Store: store, Auth: auth, Now: clock.Now, PingInterval: -1}}
	if tweak != nil {
		tweak(o)
	}
	srv, err := relay.NewServer(&o.Options)
	if err != nil {
		t.Fatal(err)
	}
	am, err := New(srv.Backend(), &o.Automerge)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Mount("/automerge", am); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	tr := &testRelay{t: t, srv: srv, am: am, url: "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws",
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

// client dials /ws as a read/write-all device of app.
func (tr *testRelay) client(app string) *transport.Client {
	tr.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := transport.Dial(ctx, tr.url, &transport.Options{PingInterval: -1})
	if err != nil {
		tr.t.Fatal(err)
	}
	c := transport.NewClient(conn, nil)
	tr.t.Cleanup(func() { c.Close() })
	var w transport.Welcome
	hello := &transport.Hello{APIKey: tr.apps[app].APIKey, Token: tr.tokens[app], ReplicaID: "replica-" + app, Versions: transport.SupportedVersions()}
	if err := c.Call(ctx, hello, &w); err != nil {
		tr.t.Fatal(err)
	}
	return c
}

func mustCall[R any, PR interface {
	*R
	transport.Body
}](t testing.TB, c *transport.Client, req transport.Body) *R {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp := PR(new(R))
	if err := c.Call(ctx, req, resp); err != nil {
		t.Fatalf("%s: %v", req.MessageType(), err)
	}
	return (*R)(resp)
}

func pushOf(coll string, fence uint64, recs ...transport.RecordChanges) *transport.Push {
	return &transport.Push{Collection: coll, Fence: fence, Records: recs}
}

func rec(id string, data []byte) transport.RecordChanges {
	return transport.RecordChanges{Record: id, Data: data}
}

func nextLive(t *testing.T, c *transport.Client) *transport.Live {
	t.Helper()
	select {
	case lv := <-c.Live():
		return lv
	case <-c.Done():
		t.Fatalf("connection ended: %v", c.Err())
	case <-time.After(10 * time.Second):
		t.Fatal("no live message")
	}
	return nil
}
