package relay_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// damagingStore reads the records whose IDs start with "bad" or "small-bad"
// damaged, once damage is set: their stored bytes end in junk, as a disk
// or a hand in the database would leave them; the "bad" ones are then too
// long to go out unsaved.
type damagingStore struct {
	relay.Store
	damage   atomic.Bool
	junk     []byte
	badReads atomic.Int64
}

func (s *damagingStore) spoil(r relay.Record) relay.Record {
	switch {
	case !s.damage.Load():
	case strings.HasPrefix(r.ID, "bad"):
		s.badReads.Add(1)
		r.Tail = append(append([]byte(nil), r.Tail...), s.junk...)
	case strings.HasPrefix(r.ID, "small-bad"):
		r.Tail = append(append([]byte(nil), r.Tail...), s.junk[:16]...)
	}
	return r
}

func (s *damagingStore) Record(ctx context.Context, c relay.Coll, id string) (relay.Record, error) {
	r, err := s.Store.Record(ctx, c, id)
	return s.spoil(r), err
}

func (s *damagingStore) Records(ctx context.Context, c relay.Coll, after string, limit int) ([]relay.Record, error) {
	rs, err := s.Store.Records(ctx, c, after, limit)
	for i := range rs {
		rs[i] = s.spoil(rs[i])
	}
	return rs, err
}

// More damaged records than a compaction round takes, first in the store's
// order, stopped compaction for good: each round tried them again and
// never reached the rest. And a fresh pull failed on the first of them
// whose bytes were over max_record, and sent the others, which the device
// then refused, so no new device could sync the collection. Now failing
// records wait (one minute, doubling) while the others compact, are
// counted and reported, and a fresh pull leaves them out and serves the
// rest.
func TestCompactionSkipsFailingRecords(t *testing.T) {
	const maxRecord = 16 << 10
	bs, err := badgerstore.Open(t.TempDir(), &badgerstore.Options{Relaxed: true, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	store := &damagingStore{Store: bs, junk: make([]byte, maxRecord)}
	tr := newTestRelay(t, store, func(o *relay.Options) {
		o.CompactInterval, o.LogRetention = -1, -1
		o.Limits.MaxRecord = maxRecord
	})
	c := tr.client("shop")
	rng := rand.New(rand.NewPCG(9, 10))
	const bad = relay.CompactBatch + 6
	var ids []string
	for i := range bad {
		ids = append(ids, fmt.Sprintf("bad%03d", i))
	}
	ids = append(ids, "good", "small-bad1", "small-bad2")
	eds := map[string]*storetest.Editor{}
	for i, id := range ids {
		eds[id] = storetest.NewEditor(t, fmt.Sprintf("ab%04x", i))
	}
	// Two pushes of 2.5 KB each: a tail over CompactTailBytes.
	for range 2 {
		var recs []transport.RecordChanges
		for _, id := range ids {
			recs = append(recs, rec(id, eds[id].Edit(map[string]any{"pad": noise(rng, 2500)})))
		}
		mustCall[transport.Ack](t, c, pushOf("c", 0, recs...))
	}
	store.damage.Store(true)
	ctx := context.Background()

	compacted := 0
	for range 2 {
		n, err := tr.srv.CompactRound(ctx)
		if err != nil {
			t.Fatal(err)
		}
		compacted += n
	}
	if compacted != 1 {
		t.Fatalf("two rounds compacted %d records, want the good one", compacted)
	}
	if got := tr.srv.FailingRecords(); got != bad+2 {
		t.Fatalf("%d records remembered as failing, want %d", got, bad+2)
	}
	if got := tr.metric("ferry_relay_compaction_failing_records"); got != fmt.Sprintf("ferry_relay_compaction_failing_records %d", bad+2) {
		t.Errorf("metric: %q", got)
	}

	// They wait before they are tried again.
	reads := store.badReads.Load()
	if _, err := tr.srv.CompactRound(ctx); err != nil {
		t.Fatal(err)
	}
	if got := store.badReads.Load() - reads; got != 0 {
		t.Fatalf("a round right after read %d failing records again, want none", got)
	}
	tr.clock.Advance(relay.CompactRetryMin + time.Second)
	if _, err := tr.srv.CompactRound(ctx); err != nil {
		t.Fatal(err)
	}
	if got := store.badReads.Load() - reads; got != relay.CompactBatch {
		t.Fatalf("a round after the wait read %d failing records again, want %d", got, relay.CompactBatch)
	}

	// A fresh device gets every record that loads.
	fresh := tr.client("shop")
	ch, err := call[transport.Changes](t, fresh, &transport.Pull{Collection: "c"})
	if err != nil {
		t.Fatalf("fresh pull: %v", err)
	}
	if len(ch.Records) != 1 || ch.Records[0].Record != "good" || ch.More {
		var got []string
		for _, r := range ch.Records {
			got = append(got, r.Record)
		}
		t.Fatalf("fresh pull sent %v (more %v), want good alone", got, ch.More)
	}

	// CheckCompaction lists them, as ferry inspect does.
	fails, err := relay.CheckCompaction(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	if len(fails) != bad+2 || fails[0].Record != "bad000" || !errors.Is(fails[0].Err, relay.ErrStoreDamaged) {
		t.Fatalf("CheckCompaction found %d records (first %+v), want %d", len(fails), fails[0], bad+2)
	}
}
