package replica

import (
	"context"
	"errors"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/transport"
)

func setType(t *testing.T, r *Replica, typ policy.Type) {
	t.Helper()
	p, _ := r.Profile("p")
	p.Type = typ
	if err := r.UpdateProfile(p); err != nil {
		t.Fatal(err)
	}
}

func ids(t *testing.T, r *Replica, coll string) string {
	t.Helper()
	recs, err := collect(coll2(t, r, coll).Scan(ScanOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, rec := range recs {
		out = append(out, rec.ID)
	}
	return strings.Join(out, ",")
}

// relayFields reads a record as the relay holds it.
func (e *syncEnv) relayFields(coll, id string) (map[string]any, bool) {
	e.t.Helper()
	b, _, err := relay.Document(context.Background(), e.store, relay.Coll{Tenant: e.app.ID, Collection: coll}, id)
	if errors.Is(err, relay.ErrNotFound) {
		return nil, false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	d, err := crdt.Load(b, "")
	if err != nil {
		e.t.Fatal(err)
	}
	f, _ := d.Fields()
	return f, !d.Deleted()
}

func TestDeleteRacingUpdate(t *testing.T) {
	for _, tc := range []struct {
		pol      policy.Policy
		survives bool
	}{
		{policy.PreferLocal, true},  // b, which syncs second, updated: its edit wins
		{policy.PreferCloud, false}, // the relay has a's delete
	} {
		t.Run(string(tc.pol), func(t *testing.T) {
			e := newSyncEnv(t)
			a, b := e.device(nil), e.device(nil)
			setProfilePolicy(t, b, tc.pol)
			ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
			ca.Create("tea", map[string]any{"price": 10})
			mustSync(t, a, "p")
			mustSync(t, b, "p")
			ca.Delete("tea")
			cb.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 11) })
			mustSync(t, a, "p")
			st := mustSync(t, b, "p")
			if c := stat(st, "c"); c.Conflicts != 1 {
				t.Fatalf("b resolved %d conflicts, want the delete conflict", c.Conflicts)
			}
			mustSync(t, a, "p")
			for _, r := range []*Replica{a, b} {
				var m map[string]any
				err := coll2(t, r, "c").Get("tea", &m)
				if tc.survives && (err != nil || m["price"] != int64(11)) {
					t.Fatalf("%s: %v %v, want the update kept", r.ID()[:6], m, err)
				}
				if !tc.survives && !errors.Is(err, ErrNotFound) {
					t.Fatalf("%s: %v %v, want deleted", r.ID()[:6], m, err)
				}
			}
		})
	}
}

func TestFailingHookKeepsRecordPending(t *testing.T) {
	e := newSyncEnv(t)
	fail := true
	hook := policy.ResolverFunc(func(c *policy.Conflict) (policy.Decision, error) {
		if fail {
			return policy.Decision{}, errors.New("cannot decide yet")
		}
		return policy.Keep("agreed"), nil
	})
	a, b := e.device(nil), e.device(&Options{MergeHook: hook})
	setProfilePolicy(t, b, policy.Custom)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	ca.Create("x", map[string]any{"v": "base"})
	ca.Create("y", map[string]any{"v": "other"})
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	ca.Put("x", map[string]any{"v": "from a"})
	ca.Put("y", map[string]any{"v": "y from a"})
	cb.Put("x", map[string]any{"v": "from b"})
	mustSync(t, a, "p")

	st, err := b.Sync(context.Background(), "p")
	if !errors.Is(err, ErrSyncFailed) || st.Status != StatusFailed {
		t.Fatalf("sync with a failing hook: %v %+v", err, st)
	}
	c := stat(st, "c")
	if len(c.Failed) != 1 || c.Failed[0].ID != "x" {
		t.Fatalf("failed records %v, want [x]", c.Failed)
	}
	// The failed record is untouched and still pending; the rest synced.
	if f := getFields(t, b, "c", "x"); f["v"] != "from b" {
		t.Fatalf("x on b = %v", f)
	}
	if f := getFields(t, b, "c", "y"); f["v"] != "y from a" {
		t.Fatalf("y on b = %v", f)
	}
	if ids, _ := cb.Pending(); len(ids) != 1 || ids[0] != "x" {
		t.Fatalf("pending on b = %v", ids)
	}
	if f, _ := e.relayFields("c", "x"); f["v"] != "from a" {
		t.Fatalf("relay got b's unresolved value: %v", f)
	}

	fail = false
	mustSync(t, b, "p")
	mustSync(t, a, "p")
	for _, r := range []*Replica{a, b} {
		if f := getFields(t, r, "c", "x"); f["v"] != "agreed" {
			t.Fatalf("%s: x = %v after the hook succeeded", r.ID()[:6], f)
		}
	}
	if n, _ := cb.PendingCount(); n != 0 {
		t.Fatalf("%d pending after resolution", n)
	}
}

func TestOneWayTypes(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")

	// One way from the device: pushes, never pulls.
	setType(t, a, policy.OneWayFromClient)
	ca.Create("a1", map[string]any{"v": 1})
	cb.Create("b1", map[string]any{"v": 1})
	mustSync(t, b, "p") // two-way: b1 reaches the relay
	mustSync(t, a, "p")
	if _, ok := e.relayFields("c", "a1"); !ok {
		t.Fatal("one-way-from-client did not push")
	}
	if got := ids(t, a, "c"); got != "a1" {
		t.Fatalf("one-way-from-client pulled: a has %s", got)
	}

	// One way from the relay: pulls, never pushes; local edits stay pending.
	setType(t, a, policy.OneWayFromServer)
	ca.Create("a2", map[string]any{"v": 2})
	mustSync(t, a, "p")
	if got := ids(t, a, "c"); got != "a1,a2,b1" {
		t.Fatalf("one-way-from-server: a has %s", got)
	}
	if _, ok := e.relayFields("c", "a2"); ok {
		t.Fatal("one-way-from-server pushed")
	}
	if ids, _ := ca.Pending(); len(ids) != 1 || ids[0] != "a2" {
		t.Fatalf("pending on a = %v", ids)
	}
}

func TestRefreshTypes(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	ca.Create("r1", map[string]any{"v": "relay"})
	ca.Create("r2", map[string]any{"v": "relay"})
	mustSync(t, a, "p")
	mustSync(t, b, "p")

	// b diverges: edits, a local-only record, a delete.
	cb.Put("r1", map[string]any{"v": "b's edit"})
	cb.Create("b-only", map[string]any{"v": 1})
	cb.Delete("r2")

	// Refresh from the relay: b's collection becomes the relay's.
	setType(t, b, policy.RefreshFromServer)
	st := mustSync(t, b, "p")
	if got := ids(t, b, "c"); got != "r1,r2" {
		t.Fatalf("after refresh-from-server b has %s", got)
	}
	if f := getFields(t, b, "c", "r1"); f["v"] != "relay" {
		t.Fatalf("r1 on b = %v", f)
	}
	if n, _ := cb.PendingCount(); n != 0 {
		t.Fatalf("%d pending after refresh-from-server", n)
	}
	if c := stat(st, "c"); c.FromRelay.Removed != 1 {
		t.Fatalf("refresh stats %+v", c)
	}

	// Refresh from the device: the relay's collection becomes a's.
	ca.Put("r1", map[string]any{"v": "a's truth", "extra": true})
	ca.Delete("r2")
	ca.Create("a-only", map[string]any{"v": 3})
	setType(t, b, policy.TwoWay)
	cb.Create("b-new", map[string]any{"v": 4})
	mustSync(t, b, "p") // the relay now also holds b-new
	setType(t, a, policy.RefreshFromClient)
	mustSync(t, a, "p")
	for id, want := range map[string]any{"r1": "a's truth", "a-only": int64(3)} {
		if f, ok := e.relayFields("c", id); !ok || f["v"] != want {
			t.Fatalf("relay %s = %v (live %v), want %v", id, f, ok, want)
		}
	}
	for _, id := range []string{"r2", "b-new"} {
		if _, live := e.relayFields("c", id); live {
			t.Fatalf("relay still has %s live after refresh-from-client", id)
		}
	}
	mustSync(t, b, "p")
	if got := ids(t, b, "c"); got != "a-only,r1" {
		t.Fatalf("b after a's refresh: %s", got)
	}
}

func TestRestoredRelayTriggersSlowSync(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	ca.Create("old", map[string]any{"v": 1})
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	ca.Create("newer", map[string]any{"v": 2})
	mustSync(t, a, "p")
	mustSync(t, b, "p")

	// The relay is restored from a backup taken before any of this: an
	// empty store with a new incarnation. Both devices hold data it lacks.
	e.swap(memstore.New())
	cb.Create("while-down", map[string]any{"v": 3})
	st := mustSync(t, a, "p")
	if c := stat(st, "c"); c.Type != policy.Slow {
		t.Fatalf("a ran %s after the restore, want slow", c.Type)
	}
	mustSync(t, b, "p")
	mustSync(t, a, "p")
	for _, r := range []*Replica{a, b} {
		if got := ids(t, r, "c"); got != "newer,old,while-down" {
			t.Fatalf("%s has %s", r.ID()[:6], got)
		}
	}
	for _, id := range []string{"old", "newer", "while-down"} {
		if _, ok := e.relayFields("c", id); !ok {
			t.Fatalf("restored relay still lacks %s", id)
		}
	}
	// And the next sync is two-way again.
	if st := mustSync(t, a, "p"); stat(st, "c").Type != policy.TwoWay {
		t.Fatal("slow sync did not settle")
	}
}

// recorder is a Listener and Delegate that writes down what it saw.
type recorder struct {
	mu        sync.Mutex
	events    []string
	progress  []Progress
	completed chan *SyncStats
	veto      bool
	skip      string
	retry     bool
}

func (r *recorder) add(s string) { r.mu.Lock(); r.events = append(r.events, s); r.mu.Unlock() }
func (r *recorder) SyncProgress(p Progress) {
	r.mu.Lock()
	r.progress = append(r.progress, p)
	r.mu.Unlock()
}
func (r *recorder) SyncCompleted(st *SyncStats) {
	r.add("completed")
	if r.completed != nil {
		r.completed <- st
	}
}
func (r *recorder) SyncStopped(*SyncStats)       { r.add("stopped") }
func (r *recorder) SyncFailed(*SyncStats, error) { r.add("failed") }
func (r *recorder) ReadyForSync(string) bool     { r.add("ready"); return !r.veto }
func (r *recorder) BeforeCollection(_, c string) bool {
	r.add("before " + c)
	return c != r.skip
}
func (r *recorder) AfterCollection(_ string, st *CollectionStats) {
	r.add("after " + st.Collection + " " + string(st.Status))
}
func (r *recorder) CollectionFailed(_, c string, _ error) FailAction {
	r.add("failed " + c)
	if r.retry {
		return Retry
	}
	return Skip
}
func (r *recorder) listener() Listener {
	return Listener{Progress: r.SyncProgress, Completed: r.SyncCompleted, Stopped: r.SyncStopped, Failed: r.SyncFailed}
}

func (r *recorder) delegate() Delegate {
	return Delegate{ReadyForSync: r.ReadyForSync, BeforeCollection: r.BeforeCollection, AfterCollection: r.AfterCollection, CollectionFailed: r.CollectionFailed}
}

func (r *recorder) log() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.events, "; ")
}

func TestEventsAndDelegate(t *testing.T) {
	e := newSyncEnv(t)
	rec := &recorder{}
	a := e.device(&Options{Listener: rec.listener(), Delegate: rec.delegate()}, "c", "d")
	coll2(t, a, "c").Create("x", map[string]any{"v": 1})
	coll2(t, a, "d").Create("y", map[string]any{"v": 1})
	mustSync(t, a, "p")
	if got := rec.log(); got != "ready; before c; after c completed; before d; after d completed; completed" {
		t.Fatalf("events: %s", got)
	}
	var pushes int
	for _, p := range rec.progress {
		if p.Direction == ToRelay && p.Done == p.Total && p.Total == 1 {
			pushes++
		}
	}
	if pushes != 2 {
		t.Fatalf("progress %+v", rec.progress)
	}

	// Veto.
	rec.events, rec.veto = nil, true
	if _, err := a.Sync(context.Background(), "p"); !errors.Is(err, ErrVetoed) {
		t.Fatalf("vetoed sync: %v", err)
	}
	if st, _ := a.LastSync("p"); st.Status != StatusVetoed {
		t.Fatalf("last sync %+v", st)
	}
	// Skip a collection.
	rec.events, rec.veto, rec.skip = nil, false, "c"
	st := mustSync(t, a, "p")
	if stat(st, "c").Status != StatusSkipped || stat(st, "d").Status != StatusCompleted {
		t.Fatalf("skip: %+v %+v", stat(st, "c"), stat(st, "d"))
	}

	// Stop: cancel while syncing.
	rec.events, rec.skip = nil, ""
	ctx, cancel := context.WithCancel(context.Background())
	stopper := &cancelOnProgress{cancel: cancel}
	b := e.device(&Options{Listener: stopper.listener()}, "c", "d")
	st, err := b.Sync(ctx, "p")
	if !errors.Is(err, context.Canceled) || st.Status != StatusStopped || !stopper.stopped {
		t.Fatalf("cancelled sync: %v %+v stopped-event %v", err, st, stopper.stopped)
	}
}

type cancelOnProgress struct {
	cancel  context.CancelFunc
	stopped bool
}

func (c *cancelOnProgress) SyncProgress(Progress)        { c.cancel() }
func (c *cancelOnProgress) SyncCompleted(*SyncStats)     {}
func (c *cancelOnProgress) SyncStopped(*SyncStats)       { c.stopped = true }
func (c *cancelOnProgress) SyncFailed(*SyncStats, error) {}
func (c *cancelOnProgress) listener() Listener {
	return Listener{Progress: c.SyncProgress, Completed: c.SyncCompleted, Stopped: c.SyncStopped, Failed: c.SyncFailed}
}

func TestFailedCollectionRetriedInTheSameSync(t *testing.T) {
	e := newSyncEnv(t)
	calls := 0
	hook := policy.ResolverFunc(func(c *policy.Conflict) (policy.Decision, error) {
		calls++
		if calls == 1 {
			return policy.Decision{}, errors.New("transient")
		}
		return policy.Keep(c.Local), nil
	})
	rec := &recorder{retry: true}
	a, b := e.device(nil), e.device(&Options{MergeHook: hook, Delegate: rec.delegate()})
	setProfilePolicy(t, b, policy.Custom)
	coll2(t, a, "c").Create("x", map[string]any{"v": 0})
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	coll2(t, a, "c").Put("x", map[string]any{"v": 1})
	coll2(t, b, "c").Put("x", map[string]any{"v": 2})
	mustSync(t, a, "p")
	rec.events = nil
	st := mustSync(t, b, "p")
	if got := rec.log(); got != "ready; before c; after c failed; failed c; after c completed" {
		t.Fatalf("events: %s", got)
	}
	if len(st.Collections) != 2 || st.Status != StatusCompleted {
		t.Fatalf("stats %+v", st)
	}
}

func TestLeaseTimeoutChangesNothing(t *testing.T) {
	e := newSyncEnv(t)
	// Another device holds the collection's lease and does not let go.
	ctx := context.Background()
	holder := e.rawClient("holder")
	if err := holder.Call(ctx, &transport.LeaseAcquire{Collection: "c", TTLMS: 60_000}, &transport.Lease{}); err != nil {
		t.Fatal(err)
	}
	a := e.device(nil)
	p, _ := a.Profile("p")
	p.Timeout = 200 * time.Millisecond
	a.UpdateProfile(p)
	coll2(t, a, "c").Create("x", map[string]any{"v": 1})
	_, err := a.Sync(ctx, "p")
	if !errors.Is(err, ErrLeaseTimeout) {
		t.Fatalf("sync under a held lease: %v, want ErrLeaseTimeout", err)
	}
	if _, ok := e.relayFields("c", "x"); ok {
		t.Fatal("pushed without the lease")
	}
	if n, _ := coll2(t, a, "c").PendingCount(); n != 1 {
		t.Fatal("pending changed")
	}
}

func TestNetworkConditionsDeferSync(t *testing.T) {
	e := newSyncEnv(t)
	rec := &recorder{completed: make(chan *SyncStats, 1)}
	a := e.device(&Options{Listener: rec.listener()})
	p, _ := a.Profile("p")
	p.Networks = policy.Networks{policy.WiFi}
	a.UpdateProfile(p)
	coll2(t, a, "c").Create("x", map[string]any{"v": 1})

	a.SetNetwork(policy.Cellular)
	st, err := a.Sync(context.Background(), "p")
	if !errors.Is(err, ErrDeferred) || st.Status != StatusDeferred {
		t.Fatalf("sync on cellular: %v %+v", err, st)
	}
	if d := a.Deferred(); len(d) != 1 || d[0] != "p" {
		t.Fatalf("deferred = %v", d)
	}
	a.SetNetwork(policy.None)
	if _, ok := e.relayFields("c", "x"); ok {
		t.Fatal("synced while deferred")
	}
	a.SetNetwork(policy.WiFi) // the deferred sync runs now
	select {
	case st := <-rec.completed:
		if st.Profile != "p" {
			t.Fatal(st)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("deferred sync did not run on wifi")
	}
	if _, ok := e.relayFields("c", "x"); !ok {
		t.Fatal("deferred sync pushed nothing")
	}
}

func TestProfilesAreStoredAndBounded(t *testing.T) {
	e := newSyncEnv(t)
	dir := t.TempDir()
	r := open(t, dir, &Options{MaxProfiles: 2})
	p1, p2, p3 := e.profile("one"), e.profile("two"), e.profile("three")
	if err := r.AddProfile(p1); err != nil {
		t.Fatal(err)
	}
	if err := r.AddProfile(p1); !errors.Is(err, ErrProfileExists) {
		t.Fatalf("duplicate: %v", err)
	}
	r.AddProfile(p2)
	if err := r.AddProfile(p3); !errors.Is(err, ErrTooManyProfiles) {
		t.Fatalf("past the maximum: %v", err)
	}
	if r.MaxProfiles() != 2 {
		t.Fatal(r.MaxProfiles())
	}
	bad := e.profile("bad")
	bad.URL, bad.Mode, bad.Collections = "http://x", "sometimes", nil
	if err := r.UpdateProfile(bad); !errors.Is(err, ErrInvalidProfile) {
		t.Fatalf("invalid profile: %v", err)
	}
	custom := e.profile("two")
	custom.CollectionPolicies = map[string]policy.Policy{"c": policy.Custom}
	if err := r.UpdateProfile(custom); !errors.Is(err, ErrInvalidProfile) || !errors.Is(err, policy.ErrNoHook) {
		t.Fatalf("custom policy without a merge hook: %v", err)
	}
	withHook := open(t, "", &Options{InMemory: true, MergeHook: policy.LocalWins})
	if err := withHook.AddProfile(custom); err != nil {
		t.Fatalf("custom policy with a merge hook: %v", err)
	}
	if err := r.UpdateProfile(p3); !errors.Is(err, ErrNoProfile) {
		t.Fatalf("update of an unknown profile: %v", err)
	}
	p2.Type = policy.Slow
	if err := r.UpdateProfile(p2); err != nil {
		t.Fatal(err)
	}
	if err := r.RemoveProfile("one"); err != nil {
		t.Fatal(err)
	}
	if err := r.AddProfile(p3); err != nil {
		t.Fatalf("after a removal: %v", err)
	}
	r.Close()
	r2 := open(t, dir, &Options{MaxProfiles: 2})
	ps, _ := r2.Profiles()
	var names []string
	for _, p := range ps {
		names = append(names, p.Name+":"+string(p.Type))
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "three:two-way,two:slow" {
		t.Fatalf("after reopen: %v", names)
	}
}

func TestLocalOnlyNeverSyncs(t *testing.T) {
	e := newSyncEnv(t)
	r := open(t, "", &Options{InMemory: true, LocalOnly: true})
	if err := r.AddProfile(e.profile("p")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Sync(context.Background(), "p"); !errors.Is(err, ErrLocalOnly) {
		t.Fatalf("local-only sync: %v", err)
	}
}

func TestTokenSourceRenewsExpiredTokens(t *testing.T) {
	e := newSyncEnv(t)
	short, _ := relay.IssueToken(e.app, relay.TokenRequest{Subject: "s", TTL: time.Minute, Write: []string{"*"}}, e.clock.Now())
	var minting atomic.Bool
	minted := 0
	a := e.device(&Options{TokenSource: func(context.Context, string) (string, error) {
		if !minting.Load() {
			return short, nil // a token that expires: the source keeps giving it
		}
		minted++
		return relay.IssueToken(e.app, relay.TokenRequest{Subject: "s", TTL: time.Minute, Write: []string{"*"}}, e.clock.Now())
	}})
	coll2(t, a, "c").Create("x", map[string]any{"v": 1})
	mustSync(t, a, "p")
	e.clock.Advance(2 * time.Minute)
	if _, err := a.Sync(context.Background(), "p"); !errors.Is(err, transport.ErrTokenExpired) {
		t.Fatalf("sync with an expired token: %v", err)
	}
	minting.Store(true)
	coll2(t, a, "c").Put("x", map[string]any{"v": 2})
	mustSync(t, a, "p")
	if minted == 0 {
		t.Fatal("token source not used")
	}
	if f, _ := e.relayFields("c", "x"); f["v"] != int64(2) {
		t.Fatal(f)
	}
}

func TestOptionsHooksApplyFromTheFirstSync(t *testing.T) {
	e := newSyncEnv(t)
	var tokenCalls atomic.Int32
	a := e.device(nil)
	b := e.device(&Options{
		MergeHook: policy.PerCollection(map[string]policy.Resolver{"c": policy.ResolverFunc(func(c *policy.Conflict) (policy.Decision, error) {
			return policy.Keep("from the collection's hook"), nil
		})}, nil),
		TokenSource: func(ctx context.Context, profile string) (string, error) {
			tokenCalls.Add(1)
			return e.token, nil
		},
	})
	p, _ := b.Profile("p")
	p.Policy = policy.Custom
	b.UpdateProfile(p)
	coll2(t, a, "c").Create("x", map[string]any{"v": "a"})
	coll2(t, b, "c").Create("x", map[string]any{"v": "b"})
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	if f := getFields(t, b, "c", "x"); f["v"] != "from the collection's hook" || tokenCalls.Load() == 0 {
		t.Fatalf("b: %v, token source called %d times", f, tokenCalls.Load())
	}
}

// A device with a read-only token syncs two-way as long as it has nothing
// to push: it pulls without asking for the lease. Once it has local edits,
// the collection fails with the relay's refusal, and its edits stay.
func TestReadOnlyTokenSyncsTwoWay(t *testing.T) {
	e := newSyncEnv(t)
	writer := e.device(nil)
	coll2(t, writer, "c").Create("x", map[string]any{"v": 1})
	mustSync(t, writer, "p")

	ro, err := relay.IssueToken(e.app, relay.TokenRequest{Subject: "viewer", TTL: time.Hour, Read: []string{"*"}}, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	viewer := e.device(&Options{TokenSource: StaticToken(ro)})
	st := mustSync(t, viewer, "p")
	if got := getFields(t, viewer, "c", "x"); got["v"] != int64(1) || stat(st, "c").FromRelay.Added != 1 {
		t.Fatalf("read-only two-way sync: %v, %+v", got, stat(st, "c"))
	}

	coll2(t, viewer, "c").Create("mine", map[string]any{"v": 2})
	st, err = viewer.Sync(context.Background(), "p")
	if !errors.Is(err, ErrSyncFailed) || !errors.Is(err, transport.ErrForbidden) || stat(st, "c").Status != StatusFailed {
		t.Fatalf("pushing with a read-only token: %v, %+v", err, stat(st, "c"))
	}
	if n, _ := coll2(t, viewer, "c").PendingCount(); n != 1 {
		t.Fatal("the refused edit is no longer pending")
	}
}
