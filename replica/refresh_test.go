package replica

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/transport"
)

// A refresh from the relay discards a record's unpushed changes, but they
// may live on elsewhere: another device imported them, or another relay
// holds them. When they come back, the device's later edits to the record
// must still sync: its new changes must not be numbered as the discarded
// ones were, which every holder of those would refuse.
// twoRelays returns two relays and device a, which syncs collection c
// with the first (profile p) and the second (q), and has synced record r
// to both.
func twoRelays(t *testing.T) (e1, e2 *syncEnv, a *Replica) {
	t.Helper()
	e1, e2 = newSyncEnv(t), newSyncEnv(t)
	tokens := map[string]string{"p": e1.token, "q": e2.token}
	a = e1.device(&Options{TokenSource: func(_ context.Context, profile string) (string, error) { return tokens[profile], nil }})
	if err := a.AddProfile(e2.profile("q")); err != nil {
		t.Fatal(err)
	}
	if err := coll2(t, a, "c").Put("r", map[string]any{"v": "shared"}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a, "p")
	mustSync(t, a, "q")
	return e1, e2, a
}

func TestRefreshDiscardedChangesDoNotBlockLaterEdits(t *testing.T) {
	t.Run("imported by another device", func(t *testing.T) {
		e := newSyncEnv(t)
		a, b := e.device(nil), e.device(nil)
		ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
		if err := ca.Put("r", map[string]any{"v": "shared", "n": int64(0)}); err != nil {
			t.Fatal(err)
		}
		mustSync(t, a, "p")
		mustSync(t, b, "p")

		// a edits offline; b takes the record from a by hand.
		if err := ca.Put("r", map[string]any{"v": "a's unpushed", "n": int64(1)}); err != nil {
			t.Fatal(err)
		}
		doc, _, err := ca.Export("r")
		if err != nil {
			t.Fatal(err)
		}
		if err := cb.Import("r", doc); err != nil {
			t.Fatal(err)
		}

		// a refreshes from the relay, which lacks its edit: discarded.
		setType(t, a, policy.RefreshFromServer)
		mustSync(t, a, "p")
		if f := getFields(t, a, "c", "r"); f["v"] != "shared" {
			t.Fatalf("after the refresh a has %v", f)
		}
		// a edits again and syncs; b, which holds a's discarded edit,
		// syncs after it, and pushes the edit the relay lacks.
		setType(t, a, policy.TwoWay)
		if err := ca.Put("r", map[string]any{"later": "a's later edit"}); err != nil {
			t.Fatal(err)
		}
		st := mustSync(t, a, "p")
		if f := stat(st, "c").Failed; len(f) > 0 {
			t.Fatalf("a's later edit failed to sync: %+v", f)
		}
		for _, r := range []*Replica{b, a, b} {
			if f := stat(mustSync(t, r, "p"), "c").Failed; len(f) > 0 {
				t.Fatalf("sync of %s failed: %+v", r.ID()[:6], f)
			}
		}
		for _, r := range []*Replica{a, b} {
			if f := getFields(t, r, "c", "r"); f["later"] != "a's later edit" {
				t.Fatalf("%s has %v, without a's later edit", r.ID()[:6], f)
			}
			if n, _ := r.Collection("c").PendingCount(); n != 0 {
				t.Fatalf("%s has %d records pending", r.ID()[:6], n)
			}
		}
		ha, _ := ca.Heads("r")
		hb, _ := cb.Heads("r")
		if !ha.Equal(hb) {
			t.Fatalf("a and b differ: %v and %v", ha, hb)
		}
	})

	t.Run("held by another relay", func(t *testing.T) {
		// a syncs one collection with two relays; the second holds a's
		// edit when a refreshes from the first.
		_, e2, a := twoRelays(t)
		ca := coll2(t, a, "c")
		if err := ca.Put("r", map[string]any{"v": "only on q"}); err != nil {
			t.Fatal(err)
		}
		mustSync(t, a, "q")
		setType(t, a, policy.RefreshFromServer)
		mustSync(t, a, "p")
		if f := getFields(t, a, "c", "r"); f["v"] != "shared" {
			t.Fatalf("after the refresh a has %v", f)
		}
		// A later edit reaches the second relay, which holds the
		// discarded change.
		if err := ca.Put("r", map[string]any{"v": "later"}); err != nil {
			t.Fatal(err)
		}
		st := mustSync(t, a, "q")
		if f := stat(st, "c").Failed; len(f) > 0 {
			t.Fatalf("a's later edit failed to sync to q: %+v", f)
		}
		b := e2.device(nil)
		mustSync(t, b, "p")
		ha, _ := ca.Heads("r")
		hb, _ := coll2(t, b, "c").Heads("r")
		if !ha.Equal(hb) {
			t.Fatalf("a and the second relay's device differ: %v and %v", ha, hb)
		}
	})

	t.Run("pulled from another relay", func(t *testing.T) {
		// a syncs one collection with two relays; another device's edit
		// reaches a from the second, and a refresh from the first, which
		// lacks it, discards it: a's next sync with the second brings it
		// back.
		_, e2, a := twoRelays(t)
		ca := coll2(t, a, "c")
		b := e2.device(nil)
		mustSync(t, b, "p")
		if err := coll2(t, b, "c").Put("r", map[string]any{"v": "b's, only on q"}); err != nil {
			t.Fatal(err)
		}
		mustSync(t, b, "p")
		mustSync(t, a, "q")
		if f := getFields(t, a, "c", "r"); f["v"] != "b's, only on q" {
			t.Fatalf("a has %v after pulling b's edit", f)
		}
		setType(t, a, policy.RefreshFromServer)
		mustSync(t, a, "p")
		if f := getFields(t, a, "c", "r"); f["v"] != "shared" {
			t.Fatalf("after the refresh a has %v", f)
		}
		// A live session of q, had one run, would have moved q's cursor
		// on meanwhile, as a live message does.
		head, err := e2.store.Head(context.Background(), relay.Coll{Tenant: e2.app.ID, Collection: "c"})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.update(func(txn *badger.Txn) error { return advanceCursor(txn, "q", "c", head) }); err != nil {
			t.Fatal(err)
		}
		mustSync(t, a, "q")
		ha, _ := ca.Heads("r")
		hb, _ := coll2(t, b, "c").Heads("r")
		if !ha.Equal(hb) {
			t.Fatalf("a and the second relay's device differ: %v and %v", ha, hb)
		}
	})

	t.Run("purged, then made again", func(t *testing.T) {
		// a record the relay never had is purged; b holds it, and a
		// makes it again under the same ID.
		e := newSyncEnv(t)
		a, b := e.device(nil), e.device(nil)
		ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
		if err := ca.Create("r", map[string]any{"v": "first"}); err != nil {
			t.Fatal(err)
		}
		doc, _, err := ca.Export("r")
		if err != nil {
			t.Fatal(err)
		}
		if err := cb.Import("r", doc); err != nil {
			t.Fatal(err)
		}
		setType(t, a, policy.RefreshFromServer)
		mustSync(t, a, "p")
		if got := ids(t, a, "c"); got != "" {
			t.Fatalf("after the refresh a has %q", got)
		}
		setType(t, a, policy.TwoWay)
		if err := ca.Put("r", map[string]any{"v": "again"}); err != nil {
			t.Fatal(err)
		}
		for _, r := range []*Replica{a, b, a} {
			if f := stat(mustSync(t, r, "p"), "c").Failed; len(f) > 0 {
				t.Fatalf("sync of %s failed: %+v", r.ID()[:6], f)
			}
		}
		ha, _ := ca.Heads("r")
		hb, _ := cb.Heads("r")
		if !ha.Equal(hb) {
			t.Fatalf("a and b differ: %v and %v", ha, hb)
		}
	})
}

// A refresh discards the local changes the relay lacks as of its start;
// what the app writes while it runs was acknowledged to the app and must
// survive it, whether or not the record's page has been applied yet, and
// sync later. The writes are made from the progress listener, between two
// pages of the refresh's pull.
func TestRefreshKeepsWritesMadeWhileItRuns(t *testing.T) {
	limits := transport.Limits{MaxBatch: 3}
	f := newFaultRelay(t, limits)
	hook := &progressHook{}
	a, b := f.env.device(nil), f.env.device(&Options{Listener: hook.listener()})
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	for i := range 9 { // three pages
		if err := ca.Create(fmt.Sprintf("r%02d", i), map[string]any{"n": int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	mustSync(t, a, "p")
	mustSync(t, b, "p")

	// Before the refresh: changes the relay lacks, to be discarded.
	if err := cb.Put("r08", map[string]any{"n": int64(8), "before": "discarded"}); err != nil {
		t.Fatal(err)
	}
	if err := cb.Create("gone", map[string]any{"v": "discarded"}); err != nil {
		t.Fatal(err)
	}

	setType(t, b, policy.RefreshFromServer)
	wrote := false
	hook.once(func(p Progress) bool {
		if p.Direction != FromRelay || p.Done != limits.MaxBatch {
			return false
		}
		// r00 is refreshed already, r07 is not yet.
		for _, id := range []string{"r00", "r07"} {
			if err := cb.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"during"}, "kept "+id) }); err != nil {
				t.Errorf("update %s: %v", id, err)
			}
		}
		if err := cb.Create("new", map[string]any{"v": "made during the refresh"}); err != nil {
			t.Errorf("create: %v", err)
		}
		wrote = true
		return true
	})
	st := mustSync(t, b, "p")
	if !wrote {
		t.Fatalf("the refresh made no second page (stats %+v)", stat(st, "c"))
	}
	check := func(r *Replica) {
		t.Helper()
		for _, id := range []string{"r00", "r07"} {
			if f := getFields(t, r, "c", id); f["during"] != "kept "+id || f["n"] == nil {
				t.Fatalf("%s has %s = %v, want the edit made during the refresh on the relay's copy", r.ID()[:6], id, f)
			}
		}
		if f := getFields(t, r, "c", "new"); f["v"] != "made during the refresh" {
			t.Fatalf("%s has new = %v", r.ID()[:6], f)
		}
		if f := getFields(t, r, "c", "r08"); f["before"] != nil {
			t.Fatalf("%s has r08 = %v: the change made before the refresh was kept", r.ID()[:6], f)
		}
		if got := ids(t, r, "c"); strings.Contains(got, "gone") {
			t.Fatalf("%s has %q: the record made before the refresh was kept", r.ID()[:6], got)
		}
	}
	check(b)

	// The writes are pending, and reach the relay and the other device.
	setType(t, b, policy.TwoWay)
	if st := stat(mustSync(t, b, "p"), "c"); len(st.Failed) > 0 {
		t.Fatalf("b's sync failed: %+v", st.Failed)
	}
	mustSync(t, a, "p")
	check(a)
	f.wantSame("c", a, b)
}

// refreshWithWrites sets up a and b sharing nine records, three pages of
// b's refresh pull, lets prepare change them on a, which pushes them,
// then runs b's refresh from the relay and calls during between its first
// and second page: r00..r02 are refreshed already then, r03..r08 not yet.
func refreshWithWrites(t *testing.T, pol policy.Policy, mergeHook policy.Resolver, prepare func(ca *Collection), during func(cb *Collection)) (f *faultRelay, a, b *Replica) {
	t.Helper()
	limits := transport.Limits{MaxBatch: 3}
	f = newFaultRelay(t, limits)
	hook := &progressHook{}
	a, b = f.env.device(nil), f.env.device(&Options{Listener: hook.listener(), MergeHook: mergeHook})
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	for i := range 9 {
		if err := ca.Create(fmt.Sprintf("r%02d", i), map[string]any{"n": int64(i), "v": "base"}); err != nil {
			t.Fatal(err)
		}
	}
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	if pol != "" {
		setProfilePolicy(t, b, pol)
	}
	prepare(ca)
	mustSync(t, a, "p")

	setType(t, b, policy.RefreshFromServer)
	wrote := false
	hook.once(func(p Progress) bool {
		if p.Direction != FromRelay || p.Done != limits.MaxBatch {
			return false
		}
		during(cb)
		wrote = true
		return true
	})
	st := mustSync(t, b, "p")
	if !wrote {
		t.Fatalf("the refresh made no second page (stats %+v)", stat(st, "c"))
	}
	return f, a, b
}

// A write made while a refresh runs may conflict with the relay's copy:
// another device set the same field and pushed before the refresh. The
// record is merged, not replaced, so the conflict goes to the collection's
// policy as in any sync: prefer-local keeps the device's value and it
// ends up everywhere, prefer-cloud keeps the relay's, a custom hook
// decides. An edit made after the record's page was applied follows the
// relay's value and wins under any policy. Every other field, on either
// side, is kept.
func TestRefreshWriteConflictingWithRelaySettlesByPolicy(t *testing.T) {
	var asked []string
	both := policy.ResolverFunc(func(c *policy.Conflict) (policy.Decision, error) {
		asked = append(asked, c.Record+"."+c.Path.String())
		if c.Path.String() == "v" {
			return policy.Keep(c.Local.(string) + " & " + c.Remote.(string)), nil
		}
		return policy.Keep(c.Local), nil
	})
	for _, tc := range []struct {
		name     string
		pol      policy.Policy
		wantR07v string
	}{
		{"default", "", "b during"}, // prefer-local
		{"prefer-local", policy.PreferLocal, "b during"},
		{"prefer-cloud", policy.PreferCloud, "a before"},
		{"custom", policy.Custom, "b during & a before"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			asked = nil
			f, a, b := refreshWithWrites(t, tc.pol, both, func(ca *Collection) {
				for _, id := range []string{"r00", "r07"} {
					if err := ca.Update(id, func(d *crdt.Doc) error {
						if err := d.Set(crdt.Path{"v"}, "a before"); err != nil {
							return err
						}
						return d.Set(crdt.Path{"a"}, "a's field")
					}); err != nil {
						t.Fatal(err)
					}
				}
			}, func(cb *Collection) {
				for _, id := range []string{"r00", "r07"} {
					if err := cb.Update(id, func(d *crdt.Doc) error {
						if err := d.Set(crdt.Path{"v"}, "b during"); err != nil {
							return err
						}
						return d.Set(crdt.Path{"b"}, "b's field")
					}); err != nil {
						t.Errorf("update %s: %v", id, err)
					}
				}
			})
			check := func(r *Replica) {
				t.Helper()
				for id, v := range map[string]string{"r00": "b during", "r07": tc.wantR07v} {
					fl := getFields(t, r, "c", id)
					if fl["v"] != v || fl["a"] != "a's field" || fl["b"] != "b's field" || fl["n"] == nil {
						t.Fatalf("%s has %s = %v, want v %q and both devices' other fields", r.ID()[:6], id, fl, v)
					}
				}
				for i := range 9 {
					if i == 0 || i == 7 {
						continue
					}
					id := fmt.Sprintf("r%02d", i)
					if fl := getFields(t, r, "c", id); fl["v"] != "base" || fl["n"] != int64(i) {
						t.Fatalf("%s has %s = %v", r.ID()[:6], id, fl)
					}
				}
			}
			check(b)
			if tc.pol == policy.Custom && strings.Join(asked, ",") != "r07.v" {
				t.Fatalf("the hook was asked about %v, want r07.v alone", asked)
			}
			setType(t, b, policy.TwoWay)
			if st := stat(mustSync(t, b, "p"), "c"); len(st.Failed) > 0 {
				t.Fatalf("b's sync failed: %+v", st.Failed)
			}
			mustSync(t, a, "p")
			check(a)
			f.wantSame("c", a, b)
		})
	}
}

// A delete made while a refresh runs is a write like any other: whether
// the record's page was applied already (r00) or not yet (r07, and r05,
// which another device edited before the refresh, so the delete conflicts
// with the relay's copy and prefer-local keeps it), the record stays
// deleted, and the delete reaches the relay and the other device.
func TestRefreshKeepsDeletesMadeWhileItRuns(t *testing.T) {
	deleted := []string{"r00", "r05", "r07"}
	f, a, b := refreshWithWrites(t, "", nil, func(ca *Collection) {
		if err := ca.Put("r05", map[string]any{"n": int64(5), "v": "a before"}); err != nil {
			t.Fatal(err)
		}
	}, func(cb *Collection) {
		for _, id := range deleted {
			if err := cb.Delete(id); err != nil {
				t.Errorf("delete %s: %v", id, err)
			}
		}
	})
	check := func(r *Replica) {
		t.Helper()
		c := coll2(t, r, "c")
		for _, id := range deleted {
			var m map[string]any
			if err := c.Get(id, &m); !errors.Is(err, ErrNotFound) {
				t.Fatalf("%s has %s = %v (%v), want it deleted", r.ID()[:6], id, m, err)
			}
		}
		if got, want := ids(t, r, "c"), "r01,r02,r03,r04,r06,r08"; got != want {
			t.Fatalf("%s has %q, want %q", r.ID()[:6], got, want)
		}
	}
	check(b)
	if n, _ := coll2(t, b, "c").PendingCount(); n != len(deleted) {
		p, _ := coll2(t, b, "c").Pending()
		t.Fatalf("b has %v pending after the refresh, want the deleted records", p)
	}
	setType(t, b, policy.TwoWay)
	if st := stat(mustSync(t, b, "p"), "c"); len(st.Failed) > 0 {
		t.Fatalf("b's sync failed: %+v", st.Failed)
	}
	mustSync(t, a, "p")
	check(a)
	f.wantSame("c", a, b)
}
