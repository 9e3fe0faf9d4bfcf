package relay_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// An endpoint reads documents from the Server's one document cache: a
// record a device pushed is read from it as the push left it, with no
// store read. One not cached is read from the store once and joins the
// cache. A cached document that lacks heads the caller knows the record
// reached (another relay wrote it, unannounced) is replaced by the
// store's.
func TestBackendReadDocumentSharesTheCache(t *testing.T) {
	ctx := context.Background()
	st := &recordCountingStore{Store: memstore.New()}
	tr := newTestRelay(t, st, nil)
	b := tr.srv.Backend()
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	dev := tr.client("shop")
	ed := storetest.NewEditor(t, "")
	mustCall[transport.Ack](t, dev, pushOf("c", 0, rec("pushed", ed.Edit(map[string]any{"v": "device"}))))
	if n := tr.srv.DocCacheLen(); n != 1 {
		t.Fatalf("after one push the cache holds %d documents", n)
	}
	read := func(record string, known crdt.Heads) (fields map[string]any, heads crdt.Heads) {
		t.Helper()
		err := b.ReadDocument(ctx, c, record, known, func(doc *crdt.Doc, h crdt.Heads) error {
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
	reads := st.records.Load()
	for range 10 {
		if f, h := read("pushed", ed.Doc.Heads()); f["v"] != "device" || !h.Equal(ed.Doc.Heads()) {
			t.Fatalf("read %v at %v, want the push's", f, h)
		}
	}
	if n := st.records.Load() - reads; n != 0 {
		t.Fatalf("10 reads of a cached document read the store %d times", n)
	}
	if n := tr.srv.DocCacheLen(); n != 1 {
		t.Fatalf("reading a cached document left %d in the cache", n)
	}
	// Another relay on a shared store writes the record, and no event
	// says so: the log's heads do, and the read takes the store's.
	before := ed.Doc.Heads()
	later := ed.Edit(map[string]any{"v": "elsewhere"})
	if _, err := tr.store.Append(ctx, c, 0, tr.clock.Now(), []relay.Entry{{Record: "pushed", Base: before, Changes: later, Hashes: ed.Doc.Heads(), Heads: ed.Doc.Heads()}}); err != nil {
		t.Fatal(err)
	}
	if f, h := read("pushed", ed.Doc.Heads()); f["v"] != "elsewhere" || !h.Equal(ed.Doc.Heads()) {
		t.Fatalf("read %v at %v after another relay's write", f, h)
	}
	if h := tr.srv.CachedHeads(c, "pushed"); !h.Equal(ed.Doc.Heads()) {
		t.Fatalf("the cache holds %v, want the store's %v", h, ed.Doc.Heads())
	}
	// A push builds on the document the read left in the cache.
	mustCall[transport.Ack](t, dev, pushOf("c", 0, rec("pushed", ed.Edit(map[string]any{"v": "device again"}))))
	if f, _ := read("pushed", nil); f["v"] != "device again" {
		t.Fatalf("read %v after a push onto the store's document", f)
	}

	other := storetest.NewEditor(t, "")
	ch := other.Edit(map[string]any{"v": "stored"})
	if _, err := tr.store.Append(ctx, c, 0, tr.clock.Now(), []relay.Entry{{Record: "stored", Changes: ch, Hashes: other.Doc.Heads(), Heads: other.Doc.Heads()}}); err != nil {
		t.Fatal(err)
	}
	reads = st.records.Load()
	for range 10 {
		if f, _ := read("stored", nil); f["v"] != "stored" {
			t.Fatalf("read %v", f)
		}
	}
	if n := st.records.Load() - reads; n != 1 {
		t.Fatalf("10 reads of a record not loaded read the store %d times, want once", n)
	}
	if n := tr.srv.DocCacheLen(); n != 2 {
		t.Fatalf("after reading a record not loaded the cache holds %d documents, want 2", n)
	}
	if err := b.ReadDocument(ctx, c, "absent", nil, func(*crdt.Doc, crdt.Heads) error { return nil }); !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("ReadDocument of an absent record: %v", err)
	}
}

// A document too large for the cache is read from a copy freed once
// read returns.
func TestBackendReadDocumentFreesWhatTheCacheCannotHold(t *testing.T) {
	ctx := context.Background()
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) { o.DocCacheBytes = 1 })
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	ed := storetest.NewEditor(t, "")
	ch := ed.Edit(map[string]any{"v": "stored"})
	if _, err := tr.store.Append(ctx, c, 0, tr.clock.Now(), []relay.Entry{{Record: "r", Changes: ch, Hashes: ed.Doc.Heads(), Heads: ed.Doc.Heads()}}); err != nil {
		t.Fatal(err)
	}
	var kept *crdt.Doc
	if err := tr.srv.Backend().ReadDocument(ctx, c, "r", nil, func(doc *crdt.Doc, _ crdt.Heads) error {
		kept = doc
		f, err := doc.Fields()
		if err == nil && f["v"] != "stored" {
			err = fmt.Errorf("read %v", f)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n := tr.srv.DocCacheLen(); n != 0 {
		t.Fatalf("a 1-byte cache holds %d documents", n)
	}
	defer func() {
		if r := recover(); r != crdt.ErrFreed {
			t.Fatalf("the copy the cache could not hold was not freed (recovered %v)", r)
		}
	}()
	kept.Heads()
}

// On a shared store, another relay's event marks the collection: the
// next read of a cached document checks the record's stored heads (not
// the whole record), and keeps the document if they are its own.
func TestBackendReadDocumentChecksMarkedDocuments(t *testing.T) {
	ctx := context.Background()
	st := &headsStore{sharedStore: &sharedStore{Store: memstore.New()}}
	tr := newTestRelay(t, st, nil)
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	ed := storetest.NewEditor(t, "")
	mustCall[transport.Ack](t, tr.client("shop"), pushOf("c", 0, rec("r", ed.Edit(map[string]any{"v": 1}))))
	readV := func() any {
		t.Helper()
		var v any
		if err := tr.srv.Backend().ReadDocument(ctx, c, "r", nil, func(doc *crdt.Doc, _ crdt.Heads) error {
			var err error
			v, _, err = doc.Lookup(crdt.Path{"v"})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return v
	}
	records, heads := st.records.Load(), st.heads.Load()
	st.event(relay.StoreEvent{Kind: relay.EventAppended, Coll: c}) // an append to another record
	for range 3 {
		if v := readV(); v != int64(1) {
			t.Fatalf("read v=%v", v)
		}
	}
	if r, h := st.records.Load()-records, st.heads.Load()-heads; r != 0 || h != 1 {
		t.Fatalf("3 reads after an event read %d whole records and %d heads, want 0 and 1", r, h)
	}
	before := ed.Doc.Heads()
	later := ed.Edit(map[string]any{"v": 2})
	if _, err := tr.store.Append(ctx, c, 0, tr.clock.Now(), []relay.Entry{{Record: "r", Base: before, Changes: later, Hashes: ed.Doc.Heads(), Heads: ed.Doc.Heads()}}); err != nil {
		t.Fatal(err)
	}
	st.event(relay.StoreEvent{Kind: relay.EventAppended, Coll: c})
	if v := readV(); v != int64(2) {
		t.Fatalf("after another relay's write read v=%v, want 2", v)
	}
	if h := tr.srv.CachedHeads(c, "r"); !h.Equal(ed.Doc.Heads()) {
		t.Fatalf("the cache holds %v, want the store's %v", h, ed.Doc.Heads())
	}
}

// recordCountingStore counts whole-record reads.
type recordCountingStore struct {
	relay.Store
	records atomic.Int64
}

func (s *recordCountingStore) Record(ctx context.Context, c relay.Coll, id string) (relay.Record, error) {
	s.records.Add(1)
	return s.Store.Record(ctx, c, id)
}

// A document whose pushed changes are not durable yet is read as the
// store holds it: an endpoint never sends changes a crash could lose.
func TestBackendReadDocumentSkipsQueuedChanges(t *testing.T) {
	ctx := context.Background()
	gs := newGateStore()
	tr := newTestRelay(t, gs, nil)
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	dev := tr.client("shop")
	ed := storetest.NewEditor(t, "")
	mustCall[transport.Ack](t, dev, pushOf("c", 0, rec("r", ed.Edit(map[string]any{"v": 1}))))
	durable := ed.Doc.Heads()
	release := sync.OnceFunc(gs.holdNext())
	t.Cleanup(release) // a failure below must not leave the relay stuck on it
	acked := make(chan error, 1)
	go func() {
		_, err := call[transport.Ack](t, tr.client("shop"), pushOf("c", 0, rec("r", ed.Edit(map[string]any{"v": 2}))))
		acked <- err
	}()
	<-gs.entered // the second push is merged and queued, its Append held
	read := func() (v any, heads crdt.Heads) {
		t.Helper()
		err := tr.srv.Backend().ReadDocument(ctx, c, "r", nil, func(doc *crdt.Doc, h crdt.Heads) error {
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
	if h := tr.srv.CachedHeads(c, "r"); !h.Equal(ed.Doc.Heads()) {
		t.Fatalf("the cache holds r at %v, want the queued document's %v", h, ed.Doc.Heads())
	}
	release()
	if err := <-acked; err != nil {
		t.Fatal(err)
	}
	if v, h := read(); v != int64(2) || !h.Equal(ed.Doc.Heads()) {
		t.Fatalf("once durable: read v=%v at %v", v, h)
	}
}

// gatedRecords holds the first read of record "r" until released.
type gatedRecords struct {
	relay.Store
	entered, release chan struct{}
	held             atomic.Bool
}

func (s *gatedRecords) Record(ctx context.Context, c relay.Coll, id string) (relay.Record, error) {
	rec, err := s.Store.Record(ctx, c, id)
	if id == "r" && s.held.CompareAndSwap(false, true) {
		close(s.entered)
		<-s.release
	}
	return rec, err
}

// A record read from the store while this relay writes it, its write
// then evicted, never joins the cache as the older document: the next
// push or read would build on it.
func TestBackendReadDocumentNeverCachesAnOlderDocument(t *testing.T) {
	ctx := context.Background()
	doc := func(ed *storetest.Editor, n int64) []byte {
		fields := map[string]any{"n": n}
		for i := range 200 {
			fields[fmt.Sprint("f", i)] = int64(i)
		}
		return ed.Edit(fields)
	}
	probe, err := crdt.LoadDeferred(doc(storetest.NewEditor(t, ""), 0))
	if err != nil {
		t.Fatal(err)
	}
	cost, err := probe.Cost()
	if err != nil {
		t.Fatal(err)
	}
	// Room for one such document, not two, as pushes keep them (deferred:
	// see crdt.NewDeferred).
	st := &gatedRecords{Store: memstore.New(), entered: make(chan struct{}), release: make(chan struct{})}
	tr := newTestRelay(t, st, func(o *relay.Options) { o.DocCacheBytes = cost.Current * 3 / 2; o.CompactInterval = -1 })
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	ed := storetest.NewEditor(t, "")
	ch := doc(ed, 1)
	old := ed.Doc.Heads()
	if _, err := tr.store.Append(ctx, c, 0, tr.clock.Now(), []relay.Entry{{Record: "r", Changes: ch, Hashes: old, Heads: old}}); err != nil {
		t.Fatal(err)
	}
	read := make(chan crdt.Heads, 1)
	go func() {
		var got crdt.Heads
		err := tr.srv.Backend().ReadDocument(ctx, c, "r", nil, func(_ *crdt.Doc, h crdt.Heads) error { got = h; return nil })
		if err != nil {
			t.Error(err)
		}
		read <- got
	}()
	<-st.entered // the read has the record as it was
	dev := tr.client("shop")
	mustCall[transport.Ack](t, dev, pushOf("c", 0, rec("r", ed.Edit(map[string]any{"n": int64(2)}))))
	mustCall[transport.Ack](t, dev, pushOf("c", 0, rec("other", doc(storetest.NewEditor(t, ""), 3))))
	if h := tr.srv.CachedHeads(c, "r"); h != nil {
		t.Fatalf("r is still cached at %v: the test needs it evicted", h)
	}
	close(st.release)
	if h := <-read; !h.Equal(old) {
		t.Fatalf("the read saw %v, want the record as it was read, %v", h, old)
	}
	if h := tr.srv.CachedHeads(c, "r"); h.Equal(old) {
		t.Fatal("the document read before the push joined the cache")
	}
	var v any
	if err := tr.srv.Backend().ReadDocument(ctx, c, "r", nil, func(d *crdt.Doc, _ crdt.Heads) error {
		v, _, err = d.Lookup(crdt.Path{"n"})
		return err
	}); err != nil || v != int64(2) {
		t.Fatalf("read n=%v, %v after the push; want 2", v, err)
	}
}
