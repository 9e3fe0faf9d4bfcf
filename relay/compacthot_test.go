package relay_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// A record the relay holds in memory as stored is compacted from that
// document, not loaded from its stored bytes again: here the store reads
// the record damaged once its pushes are in, so only a save from memory
// compacts it, and the snapshot it stores must load as the record.
func TestCompactionSavesACachedRecord(t *testing.T) {
	bs, err := badgerstore.Open(t.TempDir(), &badgerstore.Options{Relaxed: true, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	store := &damagingStore{Store: bs, junk: make([]byte, 64)}
	tr := compactTestRelay(t, store, -1)
	c := tr.client("shop")
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	rng := rand.New(rand.NewPCG(5, 6))
	ed := storetest.NewEditor(t, "aa03")
	ed.Edit(map[string]any{"f": "first"})
	// Pushed whole, as a saved document: the relay builds the record's
	// document, and keeps it built for the pushes after.
	mustCall[transport.Ack](t, c, pushOf("c", 0, rec("bad-x", ed.Doc.Save())))
	for i := range 12 {
		mustCall[transport.Ack](t, c, pushOf("c", 0, rec("bad-x", ed.Edit(map[string]any{fmt.Sprint("f", i%4): noise(rng, 600)}))))
	}
	store.damage.Store(true)
	ctx := context.Background()
	n, err := tr.srv.CompactRound(ctx)
	if err != nil || n != 1 {
		t.Fatalf("compaction round compacted %d records, %v; want the cached one, saved from memory", n, err)
	}
	if got := tr.srv.FailingRecords(); got != 0 {
		t.Fatalf("%d records failing: the record was loaded from the store", got)
	}
	after, err := bs.Record(ctx, coll, "bad-x")
	if err != nil || after.TailEntries != 0 || !after.Heads.Equal(ed.Doc.Heads()) {
		t.Fatalf("after compaction: %+v, %v", after, err)
	}
	d, err := crdt.Load(after.Data(), "")
	if err != nil || !crdt.Equal(mustFields(t, d), mustFields(t, ed.Doc)) {
		t.Fatalf("compacted record reads differently: %v", err)
	}
}

// A record edited without pause crosses the compaction threshold every
// few dozen small edits; the background compactor takes it again only once
// its pace has passed, and then does.
func TestCompactionPacesAHotRecord(t *testing.T) {
	tr := compactTestRelay(t, mustBadger(t), -1)
	tr.srv.SetCompactPace(time.Minute)
	c := tr.client("shop")
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	rng := rand.New(rand.NewPCG(7, 8))
	ed := storetest.NewEditor(t, "aa04")
	grow := func() {
		for i := range 12 {
			mustCall[transport.Ack](t, c, pushOf("c", 0, rec("x", ed.Edit(map[string]any{fmt.Sprint("f", i%4): noise(rng, 600)}))))
		}
	}
	ctx := context.Background()
	round := func(want int) {
		t.Helper()
		if n, err := tr.srv.CompactRound(ctx); err != nil || n != want {
			t.Fatalf("compaction round compacted %d records, %v; want %d", n, err, want)
		}
	}
	grow()
	round(1)
	grow()
	round(0)
	if r, err := tr.store.Record(ctx, coll, "x"); err != nil || r.TailEntries != 12 {
		t.Fatalf("resting record: %d tail entries, %v; want its 12 new ones", r.TailEntries, err)
	}
	tr.clock.Advance(time.Minute)
	round(1)
	if r, err := tr.store.Record(ctx, coll, "x"); err != nil || r.TailEntries != 0 || !r.Heads.Equal(ed.Doc.Heads()) {
		t.Fatalf("after its pace: %d tail entries, %v", r.TailEntries, err)
	}
}

func mustBadger(t *testing.T) relay.Store {
	t.Helper()
	s, err := badgerstore.Open(t.TempDir(), &badgerstore.Options{Relaxed: true, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
