package amrepo

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// enteredAppends is a store whose appends, once hold is set, say they
// started, then wait until release is closed.
type enteredAppends struct {
	relay.Store
	hold    atomic.Bool
	entered chan struct{} // one value per append started
	release chan struct{}
}

func (s *enteredAppends) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	if !s.hold.Load() {
		return s.Store.Append(ctx, c, fence, now, entries)
	}
	select {
	case s.entered <- struct{}{}:
	default:
	}
	select {
	case <-s.release:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return s.Store.Append(ctx, c, fence, now, entries)
}

// busyRelay is a test relay with a small memory budget, filled by a push
// from a device on /ws whose append the store holds until release.
type busyRelay struct {
	*testRelay
	reg     *prometheus.Registry
	release func()
	pushed  chan error // the device's push, once acknowledged
	// stored is a document stored before the budget filled, and not
	// loaded.
	storedID, storedRecord string
}

// newBusyRelay's budget is maxMemory: at least 64 KiB (what the push
// filling it leaves must fit a sync message carrying changes, counted
// with max_inflated); with 72 KiB not even a small document may load.
func newBusyRelay(t *testing.T, maxMemory int64) *busyRelay {
	t.Helper()
	st := &enteredAppends{Store: memstore.New(), entered: make(chan struct{}, 1), release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	tr := newTestRelay(t, st, func(o *testOptions) {
		o.Registry = reg
		o.CompactInterval = -1
		o.Limits.MaxInflated = 64 << 10
		o.MaxMemory = maxMemory
		// No document stays loaded once its push is done: a client's
		// request must load it.
		o.DocCacheBytes = 1
		// Each try waits this long for room before it is refused with
		// busy; what the tests wait on is the endpoint's retries, driven
		// through hooks.busyWait.
		o.MemoryWait = time.Millisecond
	})
	br := &busyRelay{testRelay: tr, reg: reg, release: sync.OnceFunc(func() { close(st.release) }), pushed: make(chan error, 1)}
	t.Cleanup(br.release) // before the relay's shutdown: a failure must not leave the push held

	// The device's push: a record of 48 KB of text, which fills the
	// budget (it is larger than the whole budget, so it is let in alone).
	rng := rand.New(rand.NewPCG(7, 11))
	pad := make([]byte, 48<<10)
	for i := range pad {
		pad[i] = byte('a' + rng.IntN(26))
	}
	change := storetest.NewEditor(t, "d1").Edit(map[string]any{"pad": string(pad)})
	dev := tr.client("shop")
	br.storedID, br.storedRecord = newDocID(t)
	mustCall[transport.Ack](t, dev, pushOf("todos", 0, rec(br.storedRecord, storetest.NewEditor(t, "d2").Edit(map[string]any{"title": "eggs"}))))
	st.hold.Store(true)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		br.pushed <- dev.Call(ctx, pushOf("todos", 0, rec("big", change)), new(transport.Ack))
	}()
	select {
	case <-st.entered:
	case err := <-br.pushed:
		t.Fatalf("the device's push was answered before its append: %v", err)
	}
	if used := memoryBytes(t, reg); used < maxMemory-(64<<10) {
		t.Fatalf("the held push counts %d bytes: too few to fill the budget", used)
	}
	if testing.Verbose() {
		t.Logf("the held push counts %d bytes of the budget", memoryBytes(t, reg))
	}
	return br
}

// releasePush lets the device's push be stored, and waits for its ack.
func (br *busyRelay) releasePush() {
	br.t.Helper()
	br.release()
	if err := <-br.pushed; err != nil {
		br.t.Fatalf("the device's push: %v", err)
	}
}

// counter is the value of a counter (with label values, if any) reg has.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i, l := range m.GetLabel() {
				if i >= len(labels) || l.GetValue() != labels[i] {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return 0
}

// TestAutomergeBusyWaits: an automerge-repo client's change that comes
// while the relay's memory budget is held by another push waits, on the
// same connection, and is stored once the budget frees; the client is
// never told of an error (automerge-repo knows no busy answer).
func TestAutomergeBusyWaits(t *testing.T) {
	br := newBusyRelay(t, 96<<10)
	waits := make(chan time.Duration, 1)
	fire := make(chan time.Time)
	br.am.hooks.busyWait = func(_ *amConn, d time.Duration) <-chan time.Time {
		select {
		case waits <- d:
		default:
		}
		return fire
	}
	p, hello := dialAM(t, br.amURL("/todos", br.amCreds("shop")), "peer")
	if hello.Type != amPeer {
		t.Fatalf("join answered %+v", hello)
	}
	docID, record := newDocID(t)
	p.edit(docID, map[string]any{"title": "milk"})
	p.sync(docID, amSync)
	// The relay's first answer asks for the change; then the change is
	// refused with busy, and the handler waits to retry it.
	for retrying := false; !retrying; {
		select {
		case d := <-waits:
			t.Logf("refused with busy; retrying after %v", d)
			retrying = true
		case m := <-p.in:
			if m == nil || m.Type != amSync {
				t.Fatalf("answered %+v while the budget was full, before any retry", m)
			}
			p.take(m)
		case <-time.After(20 * time.Second):
			t.Fatal("the change was never refused with busy: the budget was not full")
		}
	}
	br.releasePush()
	close(fire)
	p.until(func(m *amMessage) bool {
		if m.Type == amError {
			t.Fatalf("relay error: %s", m.Message)
		}
		return m.Type == amSync && p.relayHas(m, docID)
	})
	r, err := br.store.Record(context.Background(), relay.Coll{Tenant: "shop", Collection: "todos"}, record)
	if err != nil {
		t.Fatal(err)
	}
	if f := storetest.FieldsAfter(t, r.Data()); f["title"] != "milk" {
		t.Fatalf("stored %v", f)
	}
	if n := counter(t, br.reg, "ferry_relay_automerge_busy_retries_total"); n < 1 {
		t.Fatalf("%v busy retries counted", n)
	}
}

// TestAutomergeBusyCloses: when the relay's memory budget stays full for
// MaxBusyWait, the connection is closed with 1013 (Try Again Later), not
// as the client's fault (1008) and with no error message; once the client
// reconnects and syncs again, as automerge-repo's does, its change is
// stored.
func TestAutomergeBusyCloses(t *testing.T) {
	br := newBusyRelay(t, 96<<10)
	var mu sync.Mutex
	var waited time.Duration
	br.am.hooks.busyWait = func(_ *amConn, d time.Duration) <-chan time.Time {
		// The wait passes at once, on the relay's clock.
		mu.Lock()
		waited += d
		mu.Unlock()
		br.clock.Advance(d)
		ch := make(chan time.Time, 1)
		ch <- time.Time{}
		return ch
	}
	p, _ := dialAM(t, br.amURL("/todos", br.amCreds("shop")), "peer")
	docID, record := newDocID(t)
	p.edit(docID, map[string]any{"title": "milk"})
	p.sync(docID, amSync)
	for m := p.next(); m != nil; m = p.next() {
		if m.Type == amError {
			t.Fatalf("the client was sent an error: %s", m.Message)
		}
		if m.Type == amSync {
			p.take(m) // the relay asks for the change
		}
	}
	err := <-p.errc
	if s := websocket.CloseStatus(err); s != websocket.StatusTryAgainLater {
		t.Fatalf("closed with %v, want 1013 (Try Again Later)", err)
	}
	if !strings.Contains(err.Error(), "max_memory") {
		t.Fatalf("close reason %q does not name max_memory", err)
	}
	mu.Lock()
	if waited != DefaultMaxBusyWait {
		t.Errorf("waited %v in all before closing, want MaxBusyWait (%v)", waited, DefaultMaxBusyWait)
	}
	mu.Unlock()
	if n := counter(t, br.reg, "ferry_relay_automerge_refused_total", "busy"); n != 1 {
		t.Fatalf("ferry_relay_automerge_refused_total{reason=\"busy\"} = %v, want 1", n)
	}
	coll := relay.Coll{Tenant: "shop", Collection: "todos"}
	if _, err := br.store.Record(context.Background(), coll, record); err == nil {
		t.Fatal("the change was stored, yet the connection was closed as busy")
	}

	br.releasePush()
	// automerge-repo's client reconnects and begins to sync each
	// document again, from a sync state that keeps only the heads both
	// sides were known to share.
	p2, hello := dialAM(t, br.amURL("/todos", br.amCreds("shop")), "peer")
	if hello.Type != amPeer {
		t.Fatalf("join answered %+v", hello)
	}
	p2.docs[docID] = &goPeerDoc{doc: p.doc(docID).doc, state: crdt.NewSyncState()}
	p2.sync(docID, amSync)
	p2.until(func(m *amMessage) bool {
		if m.Type == amError {
			t.Fatalf("relay error: %s", m.Message)
		}
		return m.Type == amSync && p2.relayHas(m, docID)
	})
	r, err := br.store.Record(context.Background(), coll, record)
	if err != nil {
		t.Fatal(err)
	}
	if f := storetest.FieldsAfter(t, r.Data()); f["title"] != "milk" {
		t.Fatalf("stored %v", f)
	}
}

// TestAutomergeBusyLoadWaits: a document the relay must load to answer a
// client, refused with busy while the memory budget is held by another
// push, is loaded and sent once the budget frees, on the same connection
// and with no error.
func TestAutomergeBusyLoadWaits(t *testing.T) {
	br := newBusyRelay(t, 72<<10)
	waits := make(chan time.Duration, 1)
	fire := make(chan time.Time)
	br.am.hooks.busyWait = func(_ *amConn, d time.Duration) <-chan time.Time {
		select {
		case waits <- d:
		default:
		}
		return fire
	}
	p, _ := dialAM(t, br.amURL("/todos", br.amCreds("shop")), "peer")
	p.sync(br.storedID, amRequest)
	select {
	case d := <-waits:
		t.Logf("the load refused with busy; retrying after %v", d)
	case m := <-p.in:
		t.Fatalf("answered %+v while the budget was full, before any retry", m)
	case <-time.After(20 * time.Second):
		t.Fatal("the load was never refused with busy: the budget was not full")
	}
	br.releasePush()
	close(fire)
	p.until(func(m *amMessage) bool {
		if m.Type != amSync {
			t.Fatalf("answered %+v", m)
		}
		return p.field(br.storedID, "title") == "eggs"
	})
}
