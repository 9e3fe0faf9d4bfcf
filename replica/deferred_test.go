package replica

import (
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// TestPulledRecordEditedAsTheDevice: a record a fresh pull stored without
// building its document is edited on the device like any other: the edit
// builds it (at its first use of the document), writes as the device's
// actor, merges with what another device wrote meanwhile, and reaches
// that device.
func TestPulledRecordEditedAsTheDevice(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	ca, cb := a.Collection("c"), b.Collection("c")
	if err := ca.Put("r1", map[string]any{"name": "tea", "qty": int64(1)}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	d, _, ok := b.cache.get(cacheKey("c", "r1"))
	if !ok || !d.Deferred() {
		t.Fatalf("after the fresh pull: cached %v, deferred %v", ok, ok && d.Deferred())
	}
	if err := ca.Update("r1", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, int64(2)) }); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a, "p")
	if err := cb.Update("r1", func(d *crdt.Doc) error {
		if got := d.Actor(); got != b.actorID() {
			t.Errorf("the edit writes as %q, want the device's actor %q", got, b.actorID())
		}
		return d.Set(crdt.Path{"name"}, "green tea")
	}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, b, "p")
	mustSync(t, a, "p")
	for _, r := range []*Replica{a, b} {
		var got struct {
			Name string `ferry:"name"`
			Qty  int64  `ferry:"qty"`
		}
		if err := r.Collection("c").Get("r1", &got); err != nil {
			t.Fatal(err)
		}
		if got.Name != "green tea" || got.Qty != 2 {
			t.Fatalf("device %s reads %+v, want both edits", r.ID()[:6], got)
		}
	}
}
