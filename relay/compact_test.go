package relay_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// compactTestRelay is a relay whose compactor only runs when the test
// asks (one round at a time), keeping retain log entries.
func compactTestRelay(t *testing.T, store relay.Store, retain int) *testRelay {
	return newTestRelay(t, store, func(o *relay.Options) { o.CompactInterval, o.LogRetention = -1, retain })
}

// A record's tail is folded into a snapshot in the background; the record
// reads the same, fresh devices get the snapshot, and pushes go on.
func TestCompactorFoldsTails(t *testing.T) {
	for name, store := range map[string]func(t *testing.T) relay.Store{
		"memory": func(*testing.T) relay.Store { return memstore.New() },
		"badger": func(t *testing.T) relay.Store {
			s, err := badgerstore.Open(t.TempDir(), &badgerstore.Options{Relaxed: true, GCInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	} {
		t.Run(name, func(t *testing.T) {
			tr := compactTestRelay(t, store(t), -1)
			c := tr.client("shop")
			coll := relay.Coll{Tenant: "shop", Collection: "c"}
			rng := rand.New(rand.NewPCG(3, 4))
			ed := storetest.NewEditor(t, "aa01")
			for i := range 12 {
				mustCall[transport.Ack](t, c, pushOf("c", 0, rec("x", ed.Edit(map[string]any{fmt.Sprint("f", i%4): noise(rng, 600)}))))
			}
			mustCall[transport.Ack](t, c, pushOf("c", 0, rec("small", storetest.NewEditor(t, "aa02").Edit(map[string]any{"v": 1}))))
			before, err := tr.store.Record(context.Background(), coll, "x")
			if err != nil || before.TailEntries != 12 || before.Snapshot != nil {
				t.Fatalf("before compaction: %+v, %v", before, err)
			}
			n, err := tr.srv.CompactRound(context.Background())
			if err != nil || n != 1 {
				t.Fatalf("compaction round compacted %d records, %v; want x alone", n, err)
			}
			after, err := tr.store.Record(context.Background(), coll, "x")
			if err != nil || after.TailEntries != 0 || after.SnapSeq != before.Seq || !after.Heads.Equal(before.Heads) {
				t.Fatalf("after compaction: seq %d snap %d tail %d, %v", after.Seq, after.SnapSeq, after.TailEntries, err)
			}
			if after.Size() >= before.Size() {
				t.Errorf("compacted record is %d bytes, was %d", after.Size(), before.Size())
			}
			d, err := crdt.Load(after.Data(), "")
			if err != nil || !crdt.Equal(mustFields(t, d), mustFields(t, ed.Doc)) {
				t.Fatalf("compacted record reads differently: %v", err)
			}
			// Pushes go on, onto the snapshot.
			mustCall[transport.Ack](t, c, pushOf("c", 0, rec("x", ed.Edit(map[string]any{"late": "yes"}))))
			ch := mustCall[transport.Changes](t, c, &transport.Pull{Collection: "c"})
			for _, r := range ch.Records {
				if r.Record != "x" {
					continue
				}
				d, err := crdt.Load(r.Data, "")
				if err != nil || !crdt.Equal(mustFields(t, d), mustFields(t, ed.Doc)) || !bytes.HasPrefix(r.Data, after.Snapshot) {
					t.Fatalf("fresh pull of x after compaction: %v", err)
				}
			}
			if got := tr.metric("ferry_relay_compactions_total"); got != "ferry_relay_compactions_total 1" {
				t.Errorf("metric: %q", got)
			}
		})
	}
}

func mustFields(t *testing.T, d *crdt.Doc) map[string]any {
	t.Helper()
	f, err := d.Fields()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// Past LogRetention entries, the log is truncated below what the snapshots
// hold; an incremental pull below the horizon gets truncated, and a pull
// from the horizon on works.
func TestLogRetentionTruncates(t *testing.T) {
	tr := compactTestRelay(t, memstore.New(), 3)
	c := tr.client("shop")
	rng := rand.New(rand.NewPCG(5, 6))
	ed := storetest.NewEditor(t, "aa03")
	for i := range 10 {
		mustCall[transport.Ack](t, c, pushOf("c", 0, rec("x", ed.Edit(map[string]any{"f": noise(rng, 1000)}))))
		_ = i
	}
	if _, err := tr.srv.CompactRound(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := call[transport.Changes](t, c, &transport.Pull{Collection: "c", Cursor: 2})
	if !errors.Is(err, transport.ErrTruncated) {
		t.Fatalf("pull below the horizon: %v, want truncated", err)
	}
	ch := mustCall[transport.Changes](t, c, &transport.Pull{Collection: "c", Cursor: 7})
	if len(ch.Records) != 3 || ch.Next != 10 {
		t.Fatalf("pull of the last 3 entries: %d records, next %d", len(ch.Records), ch.Next)
	}
	st, err := tr.store.Stats(context.Background())
	if err != nil || st.LogEntries != 3 {
		t.Fatalf("log holds %d entries, want 3 (%v)", st.LogEntries, err)
	}
}

// Live subscribers get new entries from the relay's memory: after the
// subscription caught up, a push reaches them without the store being
// read again.
func TestLiveFromMemory(t *testing.T) {
	counting := &countingStore{Store: memstore.New()}
	tr := newTestRelay(t, counting, nil)
	pusher := tr.client("shop")
	ed := storetest.NewEditor(t, "aa04")
	mustCall[transport.Ack](t, pusher, pushOf("c", 0, rec("x", ed.Edit(map[string]any{"n": 0}))))
	sub := tr.client("shop")
	mustCall[transport.OK](t, sub, &transport.Subscribe{Collection: "c", Cursor: 0})
	if lv := <-sub.Live(); lv.Next != 1 {
		t.Fatalf("catch-up live message ends at %d", lv.Next)
	}
	for i := 1; i <= 20; i++ {
		before := counting.logReads.Load()
		mustCall[transport.Ack](t, pusher, pushOf("c", 0, rec("x", ed.Edit(map[string]any{"n": i}))))
		lv := <-sub.Live()
		if lv.Next != uint64(i+1) || len(lv.Records) != 1 {
			t.Fatalf("live message %d: next %d, %d records", i, lv.Next, len(lv.Records))
		}
		if n := counting.logReads.Load() - before; n != 0 && i > 1 {
			t.Fatalf("push %d reached the subscriber after %d log reads", i, n)
		}
	}
}

// countingStore counts Log calls.
type countingStore struct {
	relay.Store
	logReads atomic.Int64
}

func (s *countingStore) Log(ctx context.Context, c relay.Coll, after uint64, limit int) ([]relay.LogEntry, error) {
	s.logReads.Add(1)
	return s.Store.Log(ctx, c, after, limit)
}
