package replica

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
)

// heldAppendStore holds the first append to collection coll until gate is
// closed, telling entered when it starts waiting.
type heldAppendStore struct {
	relay.Store
	coll    string
	gate    chan struct{}
	entered chan struct{}
	once    sync.Once
}

func (s *heldAppendStore) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	if c.Collection == s.coll {
		s.once.Do(func() {
			close(s.entered)
			<-s.gate
		})
	}
	return s.Store.Append(ctx, c, fence, now, entries)
}

// onMessage is a log handler that calls f, once, at the first record
// with message msg.
type onMessage struct {
	msg  string
	once *sync.Once
	f    func()
}

func (h onMessage) Enabled(context.Context, slog.Level) bool { return true }
func (h onMessage) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(h.f)
	}
	return nil
}
func (h onMessage) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h onMessage) WithGroup(string) slog.Handler      { return h }

// sawBusy reports whether h's message was logged.
func sawBusy(h *onMessage) bool {
	seen := true
	h.once.Do(func() { seen = false })
	return seen
}

// TestSyncWaitsOutBusyRelay syncs through a relay whose memory budget is
// taken by another device's push, held in its store append: the relay
// answers the sync's requests busy, and the sync asks again after the
// wait the relay asks for, instead of failing, and completes once the
// other push is written. Two-way, the pull is answered busy; one-way from
// the device, the push.
func TestSyncWaitsOutBusyRelay(t *testing.T) {
	for _, typ := range []policy.Type{policy.TwoWay, policy.OneWayFromClient} {
		t.Run(string(typ), func(t *testing.T) { syncWaitsOutBusyRelay(t, typ) })
	}
}

func syncWaitsOutBusyRelay(t *testing.T, typ policy.Type) {
	e := newSyncEnv(t)
	gs := &heldAppendStore{Store: memstore.New(), coll: "b", gate: make(chan struct{}), entered: make(chan struct{})}
	e.swapWith(gs, func(o *relay.Options) {
		// A page (max_frame) is more than the whole budget: a pull is
		// let in only when nothing else holds any of it.
		o.MaxMemory = 1 << 20
		o.MemoryWait = 10 * time.Millisecond
	})
	// The first busy answer lets the other device's push through (and
	// so does the test's end, should the sync fail).
	var gateOnce sync.Once
	openGate := func() { gateOnce.Do(func() { close(gs.gate) }) }
	defer openGate()
	busy := onMessage{msg: "relay is busy; asking again", once: &sync.Once{}, f: openGate}
	a := e.device(&Options{Logger: slog.New(busy)}, "a")
	pr := e.profile("q", "a")
	pr.Type = typ
	if err := a.AddProfile(pr); err != nil {
		t.Fatal(err)
	}
	b := e.device(nil, "b")
	idA, err := coll2(t, a, "a").Insert(product{Name: "Tea"})
	if err != nil {
		t.Fatal(err)
	}
	// b's record is many small maps: it costs far more than the budget
	// loaded, so its push is let in alone.
	idB, err := coll2(t, b, "b").Insert(smallMaps(2000))
	if err != nil {
		t.Fatal(err)
	}
	bDone := make(chan error, 1)
	go func() {
		_, err := b.Sync(context.Background(), "p")
		bDone <- err
	}()
	<-gs.entered // b's push holds memory until its append goes on
	st := mustSync(t, a, "q")
	if c := stat(st, "a"); c.ToRelay.Added != 1 {
		t.Fatalf("a's sync: %+v", c)
	}
	if err := <-bDone; err != nil {
		t.Fatalf("b's sync: %v", err)
	}
	if !sawBusy(&busy) {
		t.Fatal("a's sync never saw busy: the test proves nothing")
	}
	for coll, id := range map[string]string{"a": idA, "b": idB} {
		if _, err := e.store.Record(context.Background(), relay.Coll{Tenant: e.app.ID, Collection: coll}, id); err != nil {
			t.Errorf("%s/%s on the relay: %v", coll, id, err)
		}
	}
}

// smallMaps is a record of n small maps in a list: it costs far more
// loaded than its bytes say.
func smallMaps(n int) map[string]any {
	items := make([]any, n)
	for i := range items {
		items[i] = map[string]any{"n": int64(i), "done": false}
	}
	return map[string]any{"items": items}
}
