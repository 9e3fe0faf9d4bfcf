package replica

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
)

// syncEnv is a relay on loopback that test replicas sync through.
type syncEnv struct {
	t     *testing.T
	srv   *relay.Server
	http  *httptest.Server
	store relay.Store
	url   string
	app   relay.App
	auth  *relay.Auth
	token string
	clock *testClock
	h     atomic.Pointer[http.Handler] // the current relay, swappable
}

// testClock is the relay's clock, for token expiry.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newSyncEnv(t *testing.T) *syncEnv {
	t.Helper()
	e := &syncEnv{t: t, app: relay.NewApp("shop"), clock: &testClock{t: time.Now()}}
	var err error
	if e.auth, err = relay.NewAuth([]relay.App{e.app}, e.clock.Now); err != nil {
		t.Fatal(err)
	}
	e.swap(relay.NewMemStore())
	e.http = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*e.h.Load()).ServeHTTP(w, r) }))
	e.url = "ws" + strings.TrimPrefix(e.http.URL, "http") + "/ws"
	if e.token, err = relay.IssueToken(e.app, relay.TokenRequest{Subject: "tester", TTL: time.Hour, Write: []string{"*"}}, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
		e.http.Close()
		e.store.Close()
	})
	return e
}

// swap puts a new relay, over store, behind the same URL: a relay
// restored from a backup is a store with a new incarnation.
func (e *syncEnv) swap(store relay.Store) {
	e.t.Helper()
	srv, err := relay.NewServer(&relay.Options{Store: store, Auth: e.auth, Now: e.clock.Now, PingInterval: -1})
	if err != nil {
		e.t.Fatal(err)
	}
	if e.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		e.srv.Shutdown(ctx)
		cancel()
		e.store.Close()
	}
	e.srv, e.store = srv, store
	h := srv.Handler()
	e.h.Store(&h)
}

// device opens an in-memory replica with a manual two-way profile "p"
// for the given collections.
func (e *syncEnv) device(o *Options, colls ...string) *Replica {
	e.t.Helper()
	opts := Options{}
	if o != nil {
		opts = *o
	}
	opts.InMemory = true
	if opts.TokenSource == nil {
		opts.TokenSource = StaticToken(e.token)
	}
	r := open(e.t, "", &opts)
	if err := r.AddProfile(e.profile("p", colls...)); err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *syncEnv) profile(name string, colls ...string) Profile {
	if len(colls) == 0 {
		colls = []string{"c"}
	}
	return Profile{Name: name, URL: e.url, APIKey: e.app.APIKey,
		Mode: policy.Manual, Type: policy.TwoWay, Collections: colls, Timeout: 10 * time.Second}
}

func mustSync(t *testing.T, r *Replica, profile string) *SyncStats {
	t.Helper()
	st, err := r.Sync(context.Background(), profile)
	if err != nil {
		t.Fatalf("sync of %s: %v (stats %+v)", r.ID()[:6], err, st)
	}
	return st
}

func getFields(t *testing.T, r *Replica, coll, id string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := coll2(t, r, coll).Get(id, &m); err != nil {
		t.Fatalf("get %s/%s on %s: %v", coll, id, r.ID()[:6], err)
	}
	return m
}

func coll2(t *testing.T, r *Replica, name string) *Collection {
	t.Helper()
	c := r.Collection(name)
	return c
}

func setProfilePolicy(t *testing.T, r *Replica, pol policy.Policy) {
	t.Helper()
	p, err := r.Profile("p")
	if err != nil {
		t.Fatal(err)
	}
	p.Policy = pol
	if err := r.UpdateProfile(p); err != nil {
		t.Fatal(err)
	}
}

func stat(st *SyncStats, coll string) *CollectionStats {
	for _, c := range st.Collections {
		if c.Collection == coll {
			return c
		}
	}
	panic(fmt.Sprintf("no stats for %s", coll))
}
