package replica

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/relaytest"
	"github.com/ferrysync/ferry/transport"
)

// syncEnv is a relay on loopback that test replicas sync through.
type syncEnv struct {
	t     *testing.T
	rl    *relaytest.Relay
	srv   *relay.Server
	store relay.Store
	url   string
	app   relay.App
	auth  *relay.Auth
	token string
	clock *testClock
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
	e := &syncEnv{t: t, clock: &testClock{t: time.Now()}}
	e.rl = relaytest.Start(t, &relaytest.Options{Now: e.clock.Now})
	e.srv, e.store, e.url, e.app, e.auth, e.token = e.rl.Server, e.rl.Store, e.rl.URL, e.rl.App, e.rl.Auth, e.rl.Token
	return e
}

// swap puts a new relay, over store, behind the same URL: a relay
// restored from a backup is a store with a new incarnation.
func (e *syncEnv) swap(store relay.Store) { e.swapWith(store, nil) }

// swapWith is swap, with the new relay's options changed by tweak.
func (e *syncEnv) swapWith(store relay.Store, tweak func(*relay.Options)) {
	e.t.Helper()
	e.rl.Restart(e.t, store, tweak)
	e.srv, e.store = e.rl.Server, e.rl.Store
}

// rawClient connects to the relay as another device (replica ID id) over
// a connection of its own, said hello to; it closes when the test ends.
func (e *syncEnv) rawClient(id string) *transport.Client {
	e.t.Helper()
	ctx := context.Background()
	conn, err := transport.Dial(ctx, e.url, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	c := transport.NewClient(conn, nil)
	e.t.Cleanup(func() { c.Close() })
	if err := c.Call(ctx, &transport.Hello{APIKey: e.app.APIKey, Token: e.token, ReplicaID: id, Versions: transport.SupportedVersions()}, &transport.Welcome{}); err != nil {
		e.t.Fatal(err)
	}
	return c
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

// refreshSync turns profile into a refresh from the relay and syncs it.
func refreshSync(t *testing.T, r *Replica, profile string) {
	t.Helper()
	p, err := r.Profile(profile)
	if err != nil {
		t.Fatal(err)
	}
	p.Type = policy.RefreshFromServer
	if err := r.UpdateProfile(p); err != nil {
		t.Fatal(err)
	}
	mustSync(t, r, profile)
}

func mustSync(t *testing.T, r *Replica, profile string) *SyncStats {
	t.Helper()
	st, err := r.Sync(context.Background(), profile)
	if err != nil {
		t.Fatalf("sync of %s: %v (stats %+v)", r.ID()[:6], err, st)
	}
	return st
}

// setField sets one field of record id in c, as one edit.
func setField(t *testing.T, c *Collection, id, field string, v any) {
	t.Helper()
	if err := c.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{field}, v) }); err != nil {
		t.Fatal(err)
	}
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
