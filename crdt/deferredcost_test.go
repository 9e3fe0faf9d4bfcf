package crdt_test

import (
	"runtime"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// A deferred document's Cost.Current is what it takes until it is built:
// the Go heap of its ledger and kept changes, with the collector's
// headroom (at least what a copy grows the heap by, at most four times
// it), a fraction of the built document's Bytes; built, Current is Bytes.
// The relay counts its cached documents by Current. The shapes: the four
// of the cost calibration, from a snapshot and from changes, and a small
// record of one change, whose fixed overhead dominates.
func TestDeferredCostCurrent(t *testing.T) {
	// measure loads copies of b deferred and returns the heap each took,
	// and the copies.
	measure := func(t *testing.T, b []byte, copies int) (int64, []*crdt.Doc) {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		docs := make([]*crdt.Doc, copies)
		var err error
		for i := range docs {
			if docs[i], err = crdt.LoadDeferred(b); err != nil {
				t.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		return (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / int64(copies), docs
	}
	check := func(t *testing.T, name string, b []byte, copies int) {
		t.Helper()
		// What else the process allocates meanwhile (the collector's
		// and finalizers' work) moves the heap: up to three measures,
		// one of which must fit.
		var docs []*crdt.Doc
		var c crdt.Cost
		for try := range 3 {
			for _, d := range docs {
				d.Free()
			}
			var heap int64
			heap, docs = measure(t, b, copies)
			var err error
			if c, err = docs[0].Cost(); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: Current %d, heap %d per copy, Bytes %d", name, c.Current, heap, c.Bytes)
			if c.Current >= heap && c.Current <= 4*heap {
				break
			}
			if try == 2 {
				t.Errorf("%s: Current %d bytes for %d of heap per copy", name, c.Current, heap)
			}
		}
		if c.Current >= c.Bytes/2 {
			t.Errorf("%s: Current %d bytes, built %d", name, c.Current, c.Bytes)
		}
		if err := docs[0].Build(); err != nil {
			t.Fatal(err)
		}
		if b, err := docs[0].Cost(); err != nil || b.Current != b.Bytes {
			t.Errorf("%s: built, Current %d, Bytes %d (%v)", name, b.Current, b.Bytes, err)
		}
		for _, d := range docs {
			d.Free()
		}
	}
	for _, shape := range costShapes {
		t.Run(shape.name, func(t *testing.T) {
			saved := shape.build(t)
			src, err := crdt.Load(saved, "")
			if err != nil {
				t.Fatal(err)
			}
			changes, err := src.ChangesSince(nil)
			src.Free()
			if err != nil {
				t.Fatal(err)
			}
			check(t, "saved", saved, 4)
			check(t, "changes", changes, 4)
		})
	}
	t.Run("small", func(t *testing.T) {
		src := newDoc(t, actorA)
		for _, k := range []string{"name", "price", "qty", "cat", "x"} {
			set(t, src, crdt.Path{k}, k+"-value")
		}
		commit(t, src)
		ch, err := src.ChangesSince(nil)
		if err != nil {
			t.Fatal(err)
		}
		check(t, "one change", ch, 2000)
	})
}
