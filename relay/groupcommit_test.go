package relay_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// heldReads wraps a Store so a test can hold record reads, once armed,
// until it releases them, and notes how many entries each Append holds.
type heldReads struct {
	relay.Store
	armed   atomic.Bool
	entered chan struct{} // a held read has started waiting
	release chan struct{} // closed: held reads go on

	mu      sync.Mutex
	appends []int // entries per Append, in order
}

// heldRelay starts a relay on a heldReads store; release (also run at
// cleanup) lets held reads go on.
func heldRelay(t *testing.T) (h *heldReads, tr *testRelay, release func()) {
	h = &heldReads{Store: memstore.New(), entered: make(chan struct{}, 1), release: make(chan struct{})}
	tr = newTestRelay(t, h, nil)
	var once sync.Once
	release = func() { once.Do(func() { close(h.release) }) }
	t.Cleanup(release)
	return h, tr, release
}

func (h *heldReads) Record(ctx context.Context, c relay.Coll, record string) (relay.Record, error) {
	if h.armed.Load() {
		h.entered <- struct{}{}
		<-h.release
	}
	return h.Store.Record(ctx, c, record)
}

func (h *heldReads) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	h.mu.Lock()
	h.appends = append(h.appends, len(entries))
	h.mu.Unlock()
	return h.Store.Append(ctx, c, fence, now, entries)
}

func (h *heldReads) appendSizes() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int(nil), h.appends...)
}

// TestGroupTakesPushesMerging: a push ready to be written while another
// push to the collection is still being merged (here, held in its read of
// a new record) waits for that one, and both go in one store append, with
// one fsync, instead of the second waiting for the first's append and
// then for one of its own. Both are acknowledged once durable.
func TestGroupTakesPushesMerging(t *testing.T) {
	h, tr, release := heldRelay(t)
	coll := relay.Coll{"shop", "c"}
	// Not timed: the flusher waits until the merge ends.
	tr.srv.SetGroupWait(time.Hour)
	a, b := tr.client("shop"), tr.client("shop")
	ed := storetest.NewEditor(t, "aa01")
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("a", ed.Edit(map[string]any{"v": 1})))) // "a" is cached now

	h.armed.Store(true)
	pushB := pushAsync(t, b, pushOf("c", 0, rec("b", storetest.NewEditor(t, "bb01").Edit(map[string]any{"v": 1}))))
	<-h.entered // b is merging: held reading its new record
	h.armed.Store(false)
	// Set now: a collection's committer lasts while pushes to it are in
	// progress, as b's is.
	gathering := make(chan struct{}, 1)
	tr.srv.SetGatherHook(coll, func() {
		select {
		case gathering <- struct{}{}:
		default:
		}
	})
	pushA := pushAsync(t, a, pushOf("c", 0, rec("a", ed.Edit(map[string]any{"v": 2}))))
	var early *pushResult
	select {
	case <-gathering:
	case r := <-pushA:
		early = &r // written alone, without waiting for b
	}
	release()
	ra := early
	if ra == nil {
		r := <-pushA
		ra = &r
	}
	rb := <-pushB
	if ra.err != nil || rb.err != nil {
		t.Fatalf("pushes: a %v, b %v", ra.err, rb.err)
	}
	if got := h.appendSizes(); len(got) != 2 || got[1] != 2 {
		t.Errorf("appends of %v entries, want [1 2]: the second push and the one merging in one append", got)
	}
	if ra.ack.Seq == rb.ack.Seq || max(ra.ack.Seq, rb.ack.Seq) != 3 {
		t.Errorf("acks at seq %d and %d, want 2 and 3", ra.ack.Seq, rb.ack.Seq)
	}
	// Each ack names its own push's entry within the group's append.
	for _, r := range []struct {
		ack *transport.Ack
		id  string
	}{{ra.ack, "a"}, {rb.ack, "b"}} {
		es, err := h.Store.Log(context.Background(), coll, r.ack.From-1, 10)
		if r.ack.From != r.ack.Seq || err != nil || len(es) == 0 || es[0].Seq != r.ack.From || es[0].Record != r.id {
			t.Errorf("push of %s: ack from %d to %d, log there %+v (%v); want its own entry alone", r.id, r.ack.From, r.ack.Seq, es, err)
		}
	}
}

// An ack names the log entries its push stored: From to Seq, the push's
// own records in the order pushed; a push of changes the relay holds
// already stores none, and its ack says so with From 0.
func TestAckNamesItsEntries(t *testing.T) {
	store := memstore.New()
	t.Cleanup(func() { store.Close() })
	tr := newTestRelay(t, store, nil)
	c := tr.client("shop")
	coll := relay.Coll{"shop", "c"}
	mustCall[transport.Ack](t, c, pushOf("c", 0, rec("x", storetest.NewEditor(t, "cc01").Edit(map[string]any{"v": 1}))))
	ea, eb := storetest.NewEditor(t, "aa01"), storetest.NewEditor(t, "bb01")
	ack := mustCall[transport.Ack](t, c, pushOf("c", 0, rec("a", ea.Edit(map[string]any{"v": 1})), rec("b", eb.Edit(map[string]any{"v": 1}))))
	es, err := store.Log(context.Background(), coll, ack.From-1, 10)
	if err != nil {
		t.Fatal(err)
	}
	if ack.From != 2 || ack.Seq != 3 || len(es) != 2 || es[0].Record != "a" || es[1].Record != "b" {
		t.Fatalf("ack from %d to %d, log there %+v; want 2 to 3, a then b", ack.From, ack.Seq, es)
	}
	all, err := ea.Doc.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	again := mustCall[transport.Ack](t, c, pushOf("c", 0, rec("a", all)))
	if again.From != 0 || again.Seq != 3 {
		t.Fatalf("ack of a push that stored nothing: from %d, seq %d; want 0 and 3", again.From, again.Seq)
	}
}

// TestLonePushDoesNotGather: a push with no other push to its collection
// in progress is written without waiting for anything to join it.
func TestLonePushDoesNotGather(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	tr.srv.SetGroupWait(time.Hour) // a wait would show as a hung push
	var waited atomic.Int32
	// Set before the push: the committer made here is the one it uses.
	tr.srv.SetGatherHook(relay.Coll{"shop", "c"}, func() { waited.Add(1) })
	a := tr.client("shop")
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("a", storetest.NewEditor(t, "aa02").Edit(map[string]any{"v": 1}))))
	if n := waited.Load(); n != 0 {
		t.Errorf("a lone push's flusher waited %d times for pushes merging", n)
	}
}
