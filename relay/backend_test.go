package relay_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/transport"
)

// An endpoint reads documents from the Server's one document cache: a
// record a device pushed is read from it as the push left it. One not in
// the cache as stored (never pushed here, or written by another relay
// since) is read from a copy freed at once, and leaves the cache as the
// pushes left it.
func TestBackendReadDocumentSharesTheCache(t *testing.T) {
	ctx := context.Background()
	tr := newTestRelay(t, memstore.New(), nil)
	b := tr.srv.Backend()
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	dev := tr.client("shop")
	ed := newEditor(t, "")
	mustCall[transport.Ack](t, dev, pushOf("c", 0, rec("pushed", ed.edit(map[string]any{"v": "device"}))))
	if n := tr.srv.DocCacheLen(); n != 1 {
		t.Fatalf("after one push the cache holds %d documents", n)
	}
	read := func(record string) (fields map[string]any, heads crdt.Heads) {
		t.Helper()
		err := b.ReadDocument(ctx, c, record, func(doc *crdt.Doc, h crdt.Heads) error {
			heads = h
			var err error
			fields, err = doc.Fields()
			return err
		})
		if err != nil {
			t.Fatalf("ReadDocument(%s): %v", record, err)
		}
		return fields, heads
	}
	if f, h := read("pushed"); f["v"] != "device" || !h.Equal(ed.doc.Heads()) {
		t.Fatalf("read %v at %v, want the push's", f, h)
	}
	if n := tr.srv.DocCacheLen(); n != 1 {
		t.Fatalf("reading a cached document left %d in the cache", n)
	}
	// Another relay on a shared store writes the record: the cached
	// document is behind, and the read takes the store's.
	before := ed.doc.Heads()
	later := ed.edit(map[string]any{"v": "elsewhere"})
	if _, err := tr.store.Append(ctx, c, 0, tr.clock.Now(), []relay.Entry{{Record: "pushed", Base: before, Changes: later, Hashes: ed.doc.Heads(), Heads: ed.doc.Heads()}}); err != nil {
		t.Fatal(err)
	}
	if f, h := read("pushed"); f["v"] != "elsewhere" || !h.Equal(ed.doc.Heads()) {
		t.Fatalf("read %v at %v after another relay's write", f, h)
	}
	if h := tr.srv.CachedHeads(c, "pushed"); !h.Equal(before) {
		t.Fatalf("the cache holds %v, want the push's %v", h, before)
	}
	other := newEditor(t, "")
	ch := other.edit(map[string]any{"v": "stored"})
	if _, err := tr.store.Append(ctx, c, 0, tr.clock.Now(), []relay.Entry{{Record: "stored", Changes: ch, Hashes: other.doc.Heads(), Heads: other.doc.Heads()}}); err != nil {
		t.Fatal(err)
	}
	var kept *crdt.Doc
	if err := b.ReadDocument(ctx, c, "stored", func(doc *crdt.Doc, _ crdt.Heads) error {
		kept = doc
		f, err := doc.Fields()
		if err == nil && f["v"] != "stored" {
			err = fmt.Errorf("read %v", f)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n := tr.srv.DocCacheLen(); n != 1 {
		t.Fatalf("after reading a record not loaded the cache holds %d documents, want 1", n)
	}
	if err := b.ReadDocument(ctx, c, "absent", func(*crdt.Doc, crdt.Heads) error { return nil }); !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("ReadDocument of an absent record: %v", err)
	}

	defer func() {
		if r := recover(); r != crdt.ErrFreed {
			t.Fatalf("the copy of a record not cached was not freed (recovered %v)", r)
		}
	}()
	kept.Heads()
}

// A document whose pushed changes are not durable yet is read as the
// store holds it: an endpoint never sends changes a crash could lose.
func TestBackendReadDocumentSkipsQueuedChanges(t *testing.T) {
	ctx := context.Background()
	gs := newGateStore()
	tr := newTestRelay(t, gs, nil)
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	dev := tr.client("shop")
	ed := newEditor(t, "")
	mustCall[transport.Ack](t, dev, pushOf("c", 0, rec("r", ed.edit(map[string]any{"v": 1}))))
	durable := ed.doc.Heads()
	release := sync.OnceFunc(gs.holdNext())
	t.Cleanup(release) // a failure below must not leave the relay stuck on it
	acked := make(chan error, 1)
	go func() {
		_, err := call[transport.Ack](t, tr.client("shop"), pushOf("c", 0, rec("r", ed.edit(map[string]any{"v": 2}))))
		acked <- err
	}()
	<-gs.entered // the second push is merged and queued, its Append held
	read := func() (v any, heads crdt.Heads) {
		t.Helper()
		err := tr.srv.Backend().ReadDocument(ctx, c, "r", func(doc *crdt.Doc, h crdt.Heads) error {
			var err error
			v, _, err = doc.Lookup(crdt.Path{"v"})
			heads = h
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return v, heads
	}
	if v, h := read(); v != int64(1) || !h.Equal(durable) {
		t.Fatalf("while the push is not durable: read v=%v at %v, want 1 at %v", v, h, durable)
	}
	// ...and the queued document stays in the cache for the next push.
	if h := tr.srv.CachedHeads(c, "r"); !h.Equal(ed.doc.Heads()) {
		t.Fatalf("the cache holds r at %v, want the queued document's %v", h, ed.doc.Heads())
	}
	release()
	if err := <-acked; err != nil {
		t.Fatal(err)
	}
	if v, h := read(); v != int64(2) || !h.Equal(ed.doc.Heads()) {
		t.Fatalf("once durable: read v=%v at %v", v, h)
	}
}
