package relay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// objectHeavyEditor makes a record of 2,000 small maps in a list, in 40
// changes (as objectHeavyRecord), and returns its editor and the changes.
func objectHeavyEditor(t testing.TB, actor string) (*storetest.Editor, []byte) {
	t.Helper()
	ed := objectHeavyDoc(t, actor)
	ch, err := ed.Doc.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	ed.At = ed.Doc.Heads()
	return ed, ch
}

// deferredCosts returns what a record of these changes counts for in the
// relay's cache while deferred, and once built.
func deferredCosts(t testing.TB, changes []byte) (deferred, built int64) {
	t.Helper()
	d, err := crdt.LoadDeferred(changes)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	c, err := d.Cost()
	if err != nil {
		t.Fatal(err)
	}
	return c.Current, c.Bytes
}

// Records of many small objects that pushes keep deferred (checked in Go
// without an Automerge document) count in the document cache for their
// ledgers, not for what their documents would take built: a cache with
// room for two built documents keeps six such records, and edits to each
// in turn read nothing from the store. The same holds for a relay that
// reads them compacted (a snapshot, which only Automerge decodes): each is
// read and indexed once, and its edits after that read nothing either.
// What the memory budget holds is what the cache counts.
func TestDeferredRecordsStayCached(t *testing.T) {
	const n = 6
	eds := make([]*storetest.Editor, n)
	creates := make([][]byte, n)
	for i := range n {
		eds[i], creates[i] = objectHeavyEditor(t, fmt.Sprintf("0a%02x", i+1))
	}
	deferred, built := deferredCosts(t, creates[0])
	if 2*n*deferred > 2*built {
		t.Fatalf("a deferred record counts %d bytes, built %d: the test needs %d deferred records to fit where two built ones do", deferred, built, n)
	}
	store := memstore.New()
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	edits := func(t *testing.T, tr *testRelay, counted *recordCountingStore, rounds int) {
		t.Helper()
		dev := tr.client("shop")
		for round := range rounds {
			before := counted.records.Load()
			for i, ed := range eds {
				id := fmt.Sprint("r", i)
				ack := mustCall[transport.Ack](t, dev, pushOf("c", 0, rec(id, ed.Edit(map[string]any{"n": int64(round)}))))
				if h, err := crdt.HeadsFromSlices(ack.Records[0].Heads); err != nil || !h.Equal(ed.Doc.Heads()) {
					t.Fatalf("%s: acked %v, want %v (%v)", id, h, ed.Doc.Heads(), err)
				}
			}
			if got := counted.records.Load() - before; round > 0 && got != 0 {
				t.Errorf("round %d of edits read %d records from the store; the cache (%d bytes) holds them", round, got, tr.srv.DocCacheBytes())
			}
		}
		for i := range n {
			if !tr.srv.CachedDeferred(c, fmt.Sprint("r", i)) {
				t.Errorf("r%d is not cached deferred", i)
			}
		}
		if used, cached := tr.srv.MemoryInUse(), tr.srv.DocCacheSize(); used != cached {
			t.Errorf("%d bytes of the budget in use, the cache counts %d", used, cached)
		}
	}

	counted := &recordCountingStore{Store: store}
	tr := newTestRelay(t, counted, func(o *relay.Options) { o.DocCacheBytes = 2 * built; o.CompactInterval = -1 })
	dev := tr.client("shop")
	for i := range n {
		mustCall[transport.Ack](t, dev, pushOf("c", 0, rec(fmt.Sprint("r", i), creates[i])))
	}
	t.Run("pushed", func(t *testing.T) { edits(t, tr, counted, 3) })

	for i := range n {
		if err := tr.srv.CompactRecord(context.Background(), c, fmt.Sprint("r", i)); err != nil {
			t.Fatal(err)
		}
		if rec, err := store.Record(context.Background(), c, fmt.Sprint("r", i)); err != nil || len(rec.Snapshot) == 0 {
			t.Fatalf("r%d not compacted: %v", i, err)
		}
	}
	counted2 := &recordCountingStore{Store: store}
	tr2 := newTestRelay(t, counted2, func(o *relay.Options) { o.DocCacheBytes = 2 * built; o.CompactInterval = -1 })
	t.Run("compacted", func(t *testing.T) { edits(t, tr2, counted2, 3) })
}

// A reader that needs a cached deferred document whole builds it within
// the memory budget: the document stays cached, built, and both the cache
// and the budget count it for what it now takes. With no room in the
// budget, the reader gets a copy of the record loaded within it instead,
// and the cached document is not built behind the budget's back.
func TestReaderBuildsDeferredWithinBudget(t *testing.T) {
	ctx := context.Background()
	ed, create := objectHeavyEditor(t, "0b01")
	deferred, built := deferredCosts(t, create)
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	read := func(tr *testRelay) {
		t.Helper()
		err := tr.srv.Backend().ReadDocument(ctx, c, "r", nil, func(d *crdt.Doc, h crdt.Heads) error {
			if !h.Equal(ed.Doc.Heads()) || !d.Heads().Equal(h) {
				return fmt.Errorf("read at %v (document %v), want %v", h, d.Heads(), ed.Doc.Heads())
			}
			_, _, err := d.Lookup(crdt.Path{"items", 1999, "id"})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) { o.CompactInterval = -1 })
	mustCall[transport.Ack](t, tr.client("shop"), pushOf("c", 0, rec("r", create)))
	if !tr.srv.CachedDeferred(c, "r") || tr.srv.DocCacheSize() > deferred*11/10 {
		t.Fatalf("pushed: deferred %v, the cache counts %d bytes; a deferred record %d", tr.srv.CachedDeferred(c, "r"), tr.srv.DocCacheSize(), deferred)
	}
	read(tr)
	if tr.srv.CachedDeferred(c, "r") {
		t.Error("the reader did not build the cached document")
	}
	if size := tr.srv.DocCacheSize(); size < built*9/10 {
		t.Errorf("built, the document counts %d bytes in the cache, want about %d", size, built)
	}
	if used, cached := tr.srv.MemoryInUse(), tr.srv.DocCacheSize(); used != cached {
		t.Errorf("%d bytes of the budget in use, the cache counts %d", used, cached)
	}

	// A budget with room for the deferred record and less than a built
	// one: the reader's copy waits for room, which the cache gives.
	tr2 := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.MaxMemory = built / 2
		o.DocCacheBytes = built / 8
		o.MemoryWait = 5 * time.Second
		o.CompactInterval = -1
	})
	mustCall[transport.Ack](t, tr2.client("shop"), pushOf("c", 0, rec("r", create)))
	if !tr2.srv.CachedDeferred(c, "r") {
		t.Fatal("not cached deferred")
	}
	read(tr2)
	if used, cached := tr2.srv.MemoryInUse(), tr2.srv.DocCacheSize(); used != cached || used > built/2 {
		t.Errorf("after the read %d bytes of the budget (%d) in use, the cache counts %d", used, built/2, cached)
	}
}
