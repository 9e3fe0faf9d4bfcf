package replica

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
)

// earlyMergeEnv is a relay on a gated store, a device a that syncs by
// hand, and a device b that is live (on Wi-Fi only) and takes the relay's
// early messages, so that b can hold a's change before the relay does
// durably, and then edit on top of it offline.
type earlyMergeEnv struct {
	e     *syncEnv
	base  relay.Store
	gate  *appendGate
	coll  relay.Coll
	a, b  *Replica
	feedB *Feed
	// bLive receives each time b's live profile goes live; bOff each time
	// it stops for want of an allowed network.
	bLive, bOff chan struct{}
}

func newEarlyMergeEnv(t *testing.T) *earlyMergeEnv {
	useEarlyApply(t)
	e := newSyncEnv(t)
	base := memstore.New()
	t.Cleanup(func() { base.Close() })
	gate := newAppendGate(base)
	e.swap(gate)
	t.Cleanup(func() { gate.open(true, nil) })
	env := &earlyMergeEnv{e: e, base: base, gate: gate, coll: relay.Coll{Tenant: e.app.ID, Collection: "c"},
		bLive: make(chan struct{}, 16), bOff: make(chan struct{}, 16)}
	env.a = e.device(nil)
	signal := func(c chan struct{}) {
		select {
		case c <- struct{}{}:
		default:
		}
	}
	env.b = e.device(&Options{Listener: Listener{Status: func(st SyncStatus) {
		if st.Profile != "live" {
			return
		}
		switch st.State {
		case StateLive:
			signal(env.bLive)
		case StateDeferred:
			signal(env.bOff)
		}
	}}})
	env.b.SetNetwork(policy.WiFi)
	env.feedB = env.b.Collection("c").Watch(1024)
	t.Cleanup(env.feedB.Close)
	live := e.profile("live")
	live.Mode = policy.Live
	live.Networks = policy.Networks{policy.WiFi}
	if err := env.b.AddProfile(live); err != nil {
		t.Fatal(err)
	}
	env.wait(t, env.bLive, "b's live profile to go live")
	if err := env.a.Collection("c").Create("r", map[string]any{"qty": int64(0), "note": ""}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, env.a, "p")
	waitValue(t, env.b, env.feedB, "r", "qty", 0)
	mustSync(t, env.b, "p")
	return env
}

func (env *earlyMergeEnv) wait(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// earlyThenOffline has a set qty to 1 and push it while the relay's
// append is held, b take that change early from the relay and go offline,
// and b then set qty to 2 on top of it. It returns the end of a's push,
// which waits for the append.
func (env *earlyMergeEnv) earlyThenOffline(t *testing.T) <-chan error {
	t.Helper()
	env.gate.close()
	if err := env.a.Collection("c").Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, int64(1)) }); err != nil {
		t.Fatal(err)
	}
	pushed := make(chan error, 1)
	go func() {
		_, err := env.a.Sync(context.Background(), "p")
		pushed <- err
	}()
	<-env.gate.waiting
	waitValue(t, env.b, env.feedB, "r", "qty", 1)
	env.b.SetNetwork(policy.Cellular) // the manual profile still syncs
	env.wait(t, env.bOff, "b's live session to stop")
	if err := env.b.Collection("c").Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, int64(2)) }); err != nil {
		t.Fatal(err)
	}
	return pushed
}

// relayDies stops the relay with the append it holds not stored, and
// starts a new one on the store.
func (env *earlyMergeEnv) relayDies(t *testing.T, pushed <-chan error) {
	t.Helper()
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		env.e.rl.Restart(t, newAppendGate(env.base), nil)
	}()
	env.gate.open(false, errors.New("the relay died"))
	<-restarted
	if err := <-pushed; err == nil {
		t.Fatal("a's push succeeded although the relay lost it")
	}
}

// check fails unless a, b and the relay all hold want for record r.
func (env *earlyMergeEnv) check(t *testing.T, want map[string]any) {
	t.Helper()
	doc, _, err := relay.Document(context.Background(), env.base, env.coll, "r")
	if err != nil {
		t.Fatal(err)
	}
	d, err := crdt.Load(doc, "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	onRelay, err := d.Fields()
	if err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string]map[string]any{"a": getFields(t, env.a, "c", "r"), "b": getFields(t, env.b, "c", "r"), "the relay": onRelay} {
		for f, w := range want {
			if fmt.Sprint(got[f]) != fmt.Sprint(w) {
				t.Errorf("%s has %s = %v, want %v (record %v)", name, f, got[f], w, got)
			}
		}
	}
}

// A device that applied another's change early (before the relay's copy
// was durable) and then edited the same field offline holds the other's
// change as part of the version it shares with the relay, not as an edit
// of its own: once the relay holds that change (pushed again by either
// device, or durable after all), only the device's later edit is its own,
// and no conflict policy may undo that edit with the value it overwrote.
func TestEarlyAppliedChangeIsNotLocal(t *testing.T) {
	want := map[string]any{"qty": 2, "note": "a"}

	// The relay loses the change; b's next sync pushes it with b's edit
	// on top. a, holding the change pending and an edit of another field
	// since, pulls them: qty is only b's edit (a's prefer-local must not
	// write a's 1 back over it).
	t.Run("b pushes it again", func(t *testing.T) {
		env := newEarlyMergeEnv(t)
		pushed := env.earlyThenOffline(t)
		env.relayDies(t, pushed)
		mustSync(t, env.b, "p")
		if err := env.a.Collection("c").Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"note"}, "a") }); err != nil {
			t.Fatal(err)
		}
		mustSync(t, env.a, "p")
		mustSync(t, env.b, "p")
		env.check(t, want)
	})

	// The relay loses the change; its pusher pushes it again with an edit
	// of another field, before b syncs. b, preferring the relay's values,
	// pulls them: its own later edit of qty is not in conflict with the
	// change it built on.
	t.Run("a pushes it again", func(t *testing.T) {
		env := newEarlyMergeEnv(t)
		setProfilePolicy(t, env.b, policy.PreferCloud)
		pushed := env.earlyThenOffline(t)
		env.relayDies(t, pushed)
		if err := env.a.Collection("c").Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"note"}, "a") }); err != nil {
			t.Fatal(err)
		}
		mustSync(t, env.a, "p")
		mustSync(t, env.b, "p")
		mustSync(t, env.a, "p")
		env.check(t, want)
	})

	// The relay's append goes through: the durable change and a's later
	// edit of another field reach b together.
	t.Run("durable", func(t *testing.T) {
		env := newEarlyMergeEnv(t)
		setProfilePolicy(t, env.b, policy.PreferCloud)
		pushed := env.earlyThenOffline(t)
		env.gate.open(true, nil)
		if err := <-pushed; err != nil {
			t.Fatal(err)
		}
		if err := env.a.Collection("c").Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"note"}, "a") }); err != nil {
			t.Fatal(err)
		}
		mustSync(t, env.a, "p")
		mustSync(t, env.b, "p")
		mustSync(t, env.a, "p")
		env.check(t, want)
	})
}

// mergeBase finds the version a record and the relay's version both hold:
// the heads both last had when neither holds the other's changes, and past
// them a change both hold, however each came by it.
func TestMergeBase(t *testing.T) {
	newDoc := func(actor string) *crdt.Doc {
		d, err := crdt.New(actor)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Free)
		return d
	}
	edit := func(d *crdt.Doc, field string, v int64) {
		t.Helper()
		if err := d.Set(crdt.Path{field}, v); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Commit("", time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	copyInto := func(t *testing.T, dst, src *crdt.Doc) {
		t.Helper()
		// Every change of src: dst may hold some src lacks.
		data, err := src.ChangesSince(nil)
		if err == nil {
			_, err = dst.Import(data)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// base: A's record both devices hold. x: A's change both hold. y: the
	// local device's own edit; z: A's edit after x, which the relay has.
	a, local := newDoc("aa"), newDoc("bb")
	edit(a, "f", 0)
	copyInto(t, local, a)
	base := a.Heads()
	edit(a, "f", 1)
	copyInto(t, local, a)
	x := a.Heads()
	edit(local, "g", 1)
	edit(a, "h", 1)
	for _, tc := range []struct {
		name        string
		relayLacksX bool
		want        crdt.Heads
	}{
		{"both hold a change past the last shared heads", false, x},
		{"neither holds the other's", true, base},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := local.Fork(nil)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Free()
			relay := a
			if tc.relayLacksX {
				// The relay's version: base and a change of its own.
				other := newDoc("cc")
				copyInto(t, other, a)
				if relay, err = other.Fork(base); err != nil {
					t.Fatal(err)
				}
				defer relay.Free()
				if err := relay.SetActor("cc"); err != nil {
					t.Fatal(err)
				}
				edit(relay, "h", 2)
			}
			data, err := relay.ChangesSince(nil)
			if err != nil {
				t.Fatal(err)
			}
			imp, err := d.ImportChanges(data)
			if err != nil {
				t.Fatal(err)
			}
			// A head the relay names that the record lacks is no part of
			// the version both hold.
			var unknown crdt.Hash
			unknown[0] = 1
			relayHeads := append(slices.Clone(relay.Heads()), unknown)
			got, err := mergeBase(d, imp, relayHeads)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(tc.want) {
				t.Fatalf("merge base %v, want %v", got, tc.want)
			}
			// Without the import's list of what it added, the journal
			// answers the same.
			imp.Added = nil
			if got, err = mergeBase(d, imp, relayHeads); err != nil || !got.Equal(tc.want) {
				t.Fatalf("merge base from the journal %v (%v), want %v", got, err, tc.want)
			}
		})
	}
}
