package replica

import (
	"errors"
	"testing"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
)

func TestSyncRoundTrip(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")

	id, err := ca.Insert(product{Name: "Tea", Price: 2.5, Qty: 3})
	if err != nil {
		t.Fatal(err)
	}
	st := mustSync(t, a, "p")
	if c := stat(st, "c"); c.ToRelay.Added != 1 || c.Status != StatusCompleted {
		t.Fatalf("a's first sync: %+v", c)
	}
	if n, _ := ca.PendingCount(); n != 0 {
		t.Fatalf("%d pending after sync", n)
	}
	st = mustSync(t, b, "p")
	if c := stat(st, "c"); c.FromRelay.Added != 1 {
		t.Fatalf("b's first sync: %+v", c)
	}
	var p product
	if err := cb.Get(id, &p); err != nil || p.Name != "Tea" || p.Qty != 3 {
		t.Fatalf("b has %+v, %v", p, err)
	}

	// An edit and a delete travel back.
	if err := cb.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, 5) }); err != nil {
		t.Fatal(err)
	}
	id2, _ := cb.Insert(product{Name: "Coffee"})
	mustSync(t, b, "p")
	st = mustSync(t, a, "p")
	if c := stat(st, "c"); c.FromRelay.Updated != 1 || c.FromRelay.Added != 1 {
		t.Fatalf("a's second sync: %+v", c)
	}
	if err := ca.Get(id, &p); err != nil || p.Qty != 5 {
		t.Fatalf("a has %+v %v", p, err)
	}
	ca.Delete(id2)
	mustSync(t, a, "p")
	st = mustSync(t, b, "p")
	if c := stat(st, "c"); c.FromRelay.Removed != 1 {
		t.Fatalf("b's third sync: %+v", c)
	}
	if err := cb.Get(id2, &p); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted record on b: %v", err)
	}
	last, err := b.LastSync("p")
	if err != nil || last.Status != StatusCompleted || len(last.Collections) != 1 {
		t.Fatalf("LastSync = %+v %v", last, err)
	}
}

// conflictOnPrice has a and b edit the same field offline; a syncs first,
// then b (the device that finds the conflict), then a again.
func conflictOnPrice(t *testing.T, e *syncEnv, pol policy.Policy, hook policy.Resolver) (a, b *Replica, id string, stB *SyncStats) {
	a, b = e.device(&Options{MergeHook: hook}), e.device(&Options{MergeHook: hook})
	setProfilePolicy(t, a, pol)
	setProfilePolicy(t, b, pol)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	if err := ca.Create("tea", map[string]any{"price": 10, "qty": 1}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	// Offline edits of the same field (and one other field each).
	ca.Update("tea", func(d *crdt.Doc) error { d.Set(crdt.Path{"qty"}, 2); return d.Set(crdt.Path{"price"}, 12) })
	cb.Update("tea", func(d *crdt.Doc) error { d.Set(crdt.Path{"note"}, "b"); return d.Set(crdt.Path{"price"}, 15) })
	mustSync(t, a, "p")
	stB = mustSync(t, b, "p")
	mustSync(t, a, "p")
	return a, b, "tea", stB
}

func TestPreferLocalKeepsTheSyncingDevicesValue(t *testing.T) {
	e := newSyncEnv(t)
	a, b, id, st := conflictOnPrice(t, e, policy.PreferLocal, nil)
	if c := stat(st, "c"); c.Conflicts != 1 {
		t.Fatalf("b resolved %d conflicts, want 1", c.Conflicts)
	}
	for _, r := range []*Replica{a, b} {
		f := getFields(t, r, "c", id)
		if f["price"] != int64(15) || f["qty"] != int64(2) || f["note"] != "b" {
			t.Fatalf("%s has %v: want b's price 15 and both other edits", r.ID()[:6], f)
		}
	}
}

func TestPreferCloudKeepsTheRelaysValue(t *testing.T) {
	e := newSyncEnv(t)
	a, b, id, _ := conflictOnPrice(t, e, policy.PreferCloud, nil)
	for _, r := range []*Replica{a, b} {
		f := getFields(t, r, "c", id)
		if f["price"] != int64(12) || f["qty"] != int64(2) || f["note"] != "b" {
			t.Fatalf("%s has %v: want the relay's price 12", r.ID()[:6], f)
		}
	}
}

func TestMergeHookDecides(t *testing.T) {
	e := newSyncEnv(t)
	var seen *policy.Conflict
	hook := policy.ResolverFunc(func(c *policy.Conflict) (policy.Decision, error) {
		seen = c
		// Both raised the price: keep the sum of the raises.
		return policy.Keep(c.Local.(int64) + c.Remote.(int64) - c.Base.(int64)), nil
	})
	a, b, id, _ := conflictOnPrice(t, e, policy.Custom, hook)
	if seen == nil || seen.Collection != "c" || seen.Record != id || seen.Path.String() != "price" ||
		seen.LocalRecord["note"] != "b" || seen.RemoteRecord["qty"] != int64(2) {
		t.Fatalf("hook saw %+v", seen)
	}
	for _, r := range []*Replica{a, b} {
		if f := getFields(t, r, "c", id); f["price"] != int64(17) {
			t.Fatalf("%s has price %v, want 10+2+5", r.ID()[:6], f["price"])
		}
	}
}
