package replica

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
)

// appendSignal is a relay store that sends the records of every append
// it stores.
type appendSignal struct {
	relay.Store
	appended chan []string
}

func (s *appendSignal) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	seq, err := s.Store.Append(ctx, c, fence, now, entries)
	if err == nil {
		ids := make([]string, len(entries))
		for i, e := range entries {
			ids[i] = e.Record
		}
		s.appended <- ids
	}
	return seq, err
}

// A live push of the records just edited holds back a record whose merge
// hook failed, as every push does: pushing its local edits would clear its
// pending marker, and the relay's changes kept for the hook would then be
// merged without asking it. Here a live profile that only pushes runs
// beside the profile whose hook failed.
func TestLivePushHoldsBackARecordWhoseHookFailed(t *testing.T) {
	e := newSyncEnv(t)
	store := &appendSignal{Store: memstore.New(), appended: make(chan []string, 64)}
	e.swap(store)
	var fail atomic.Bool
	fail.Store(true)
	var asked atomic.Int32
	hook := policy.ResolverFunc(func(*policy.Conflict) (policy.Decision, error) {
		asked.Add(1)
		if fail.Load() {
			return policy.Decision{}, errors.New("hook down")
		}
		return policy.Keep(int64(99)), nil
	})
	status := make(chan SyncStatus, 256)
	a := e.device(nil)
	b := e.device(&Options{MergeHook: hook, Listener: Listener{Status: func(st SyncStatus) {
		select {
		case status <- st:
		default:
		}
	}}})
	setProfilePolicy(t, b, policy.Custom)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	ca.Create("tea", map[string]any{"price": 10})
	ca.Create("milk", map[string]any{"price": 1})
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	ca.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 12) })
	cb.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 15) })
	mustSync(t, a, "p")
	if _, err := b.Sync(context.Background(), "p"); !errors.Is(err, ErrMergeHook) {
		t.Fatalf("b's sync = %v, want the hook's failure", err)
	}
	for len(store.appended) > 0 {
		<-store.appended
	}

	live := e.profile("live")
	live.Mode, live.Type = policy.Live, policy.OneWayFromClient
	if err := b.AddProfile(live); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for isLive := false; !isLive; {
		select {
		case st := <-status:
			isLive = st.Profile == "live" && st.State == StateLive
		case <-deadline:
			t.Fatal("the live profile did not go live")
		}
	}
	// An edit of the held record, then one of another: the second's push
	// comes after the first's, or with it.
	cb.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"note"}, "x") })
	cb.Update("milk", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 2) })
	for pushed := false; !pushed; {
		select {
		case ids := <-store.appended:
			if slices.Contains(ids, "tea") {
				t.Fatalf("the live push sent tea, held for its merge hook (push of %v)", ids)
			}
			pushed = slices.Contains(ids, "milk")
		case <-deadline:
			t.Fatal("milk's edit was not pushed")
		}
	}
	if err := b.RemoveProfile("live"); err != nil {
		t.Fatal(err)
	}

	// Once the hook works, it decides tea's conflict.
	fail.Store(false)
	asked.Store(0)
	mustSync(t, b, "p")
	mustSync(t, a, "p")
	if asked.Load() == 0 {
		t.Fatal("tea's conflict was merged without asking the hook")
	}
	for _, r := range []*Replica{a, b} {
		if f := getFields(t, r, "c", "tea"); f["price"] != int64(99) || f["note"] != "x" {
			t.Fatalf("%s has tea %v, want the hook's price and b's note", r.ID()[:6], f)
		}
	}
}
