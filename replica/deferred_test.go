package replica

import (
	"sync"
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

// TestPulledRecordReadConcurrently: records a fresh pull stored without
// building their documents are read whole (Export) from several
// goroutines at once; building a document changes it, so the first read
// builds it under the record's write lock, not the read lock the readers
// share (under -race, the test fails if it is built under the read lock).
func TestPulledRecordReadConcurrently(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	ids := []string{"r1", "r2", "r3", "r4"}
	for i, id := range ids {
		if err := a.Collection("c").Put(id, map[string]any{"n": int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	for _, id := range ids {
		if d, _, ok := b.cache.get(cacheKey("c", id)); !ok || !d.Deferred() {
			t.Fatalf("%s: cached %v, deferred %v after the fresh pull", id, ok, ok && d.Deferred())
		}
	}
	want := map[string]crdt.Heads{}
	for _, id := range ids {
		h, err := a.Collection("c").Heads(id)
		if err != nil {
			t.Fatal(err)
		}
		want[id] = h
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for _, id := range ids {
				doc, heads, err := b.Collection("c").Export(id)
				if err != nil || len(doc) == 0 || !heads.Equal(want[id]) {
					t.Errorf("%s: export of %d bytes at %v (%v), want heads %v", id, len(doc), heads, err, want[id])
				}
			}
		})
	}
	wg.Wait()
}
