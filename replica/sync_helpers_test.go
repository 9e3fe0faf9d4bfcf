package replica

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
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
	token string
}

func newSyncEnv(t *testing.T) *syncEnv {
	t.Helper()
	app := relay.NewApp("shop")
	auth, err := relay.NewAuth([]relay.App{app}, nil)
	if err != nil {
		t.Fatal(err)
	}
	store := relay.NewMemStore()
	srv, err := relay.NewServer(&relay.Options{Store: store, Auth: auth, PingInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	tok, err := relay.IssueToken(app, relay.TokenRequest{Subject: "tester", TTL: time.Hour, Write: []string{"*"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	e := &syncEnv{t: t, srv: srv, http: hs, store: store, app: app, token: tok,
		url: "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		hs.Close()
		store.Close()
	})
	return e
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
	return Profile{Name: name, URL: e.url, APIKey: e.app.APIKey, Token: e.token,
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
	c, err := r.Collection(name)
	if err != nil {
		t.Fatal(err)
	}
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
