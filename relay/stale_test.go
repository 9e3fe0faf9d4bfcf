package relay_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// Two relays on one store, as two processes on one database would be:
// each caches the documents it merges pushes into.

// sharedStore is one store under a relay that shares it with another: it
// lets the test deliver the other relay's events (StoreEvents) by hand,
// and counts appends refused with ErrConflict.
type sharedStore struct {
	relay.Store
	conflicts atomic.Int64

	mu  sync.Mutex
	fns []func(relay.StoreEvent)
}

var _ relay.StoreEvents = (*sharedStore)(nil)

func (s *sharedStore) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	seq, err := s.Store.Append(ctx, c, fence, now, entries)
	if errors.Is(err, relay.ErrConflict) {
		s.conflicts.Add(1)
	}
	return seq, err
}

func (s *sharedStore) Watch(fn func(relay.StoreEvent)) (stop func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fns = append(s.fns, fn)
	return func() {}
}

func (s *sharedStore) Heads(ctx context.Context, colls []relay.Coll) ([]uint64, error) {
	out := make([]uint64, len(colls))
	for i, c := range colls {
		h, err := s.Head(ctx, c)
		if err != nil {
			return nil, err
		}
		out[i] = h
	}
	return out, nil
}

// headsStore is a sharedStore that reads a record's heads alone, and
// counts whole-record reads and heads reads.
type headsStore struct {
	*sharedStore
	records, heads atomic.Int64
}

var _ relay.StoreRecordHeads = (*headsStore)(nil)

func (s *headsStore) Record(ctx context.Context, c relay.Coll, id string) (relay.Record, error) {
	s.records.Add(1)
	return s.sharedStore.Record(ctx, c, id)
}

func (s *headsStore) RecordHeads(ctx context.Context, c relay.Coll, id string) (crdt.Heads, error) {
	s.heads.Add(1)
	r, err := s.sharedStore.Record(ctx, c, id)
	return r.Heads, err
}

// event tells the relay on s what another relay did.
func (s *sharedStore) event(e relay.StoreEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fn := range s.fns {
		fn(e)
	}
}

// unclosed keeps a store open when one relay sharing it closes it.
type unclosed struct{ relay.Store }

func (unclosed) Close() error { return nil }

// Device A on relay 1 and device B on relay 2 take turns editing one
// record, each building on the other's last edit. Relay 1 cached the
// record when it took A's first edit, before B's went in through relay 2;
// no event tells it (the store has none, as when a notification is lost).
// A's second edit depends on B's: the relay must read the record from the
// store before it refuses the push for a missing dependency.
func TestPushBuildsOnAnotherRelaysAppend(t *testing.T) {
	store := memstore.New()
	relays := []*testRelay{newTestRelay(t, unclosed{store}, nil), newTestRelay(t, store, nil)}
	editors := []*storetest.Editor{storetest.NewEditor(t, "aaaa"), storetest.NewEditor(t, "bbbb")}
	clients := []*transport.Client{relays[0].client("shop"), relays[1].client("shop")}
	var last []byte
	for turn := range 8 {
		i := turn % 2
		if last != nil {
			editors[i].Pulled(last)
		}
		last = editors[i].Edit(map[string]any{"turn": int64(turn)})
		if _, err := call[transport.Ack](t, clients[i], pushOf("notes", 0, rec("w", last))); err != nil {
			t.Fatalf("turn %d, through relay %d: %v", turn+1, i+1, err)
		}
	}
	r, err := store.Record(context.Background(), relay.Coll{"shop", "notes"}, "w")
	if err != nil {
		t.Fatal(err)
	}
	if got := storetest.FieldsAfter(t, r.Data())["turn"]; got != int64(7) {
		t.Fatalf("stored turn = %v, want 7", got)
	}
}

// logRecords keeps the relay's log records, for tests that look for one.
type logRecords struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// find returns the attributes of the first record at level with msg.
func (l *logRecords) find(level slog.Level, msg string) (map[string]string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.recs {
		if r.Level == level && r.Message == msg {
			attrs := map[string]string{}
			r.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
			return attrs, true
		}
	}
	return nil, false
}

// A push whose changes depend on changes neither the relay's copy nor the
// store holds is still refused, once the store was read, and the refusal
// is logged at WARN with its collection and record (and no token).
func TestPushMissingDependencyRefusedAfterReadingStore(t *testing.T) {
	store := memstore.New()
	logs := &logRecords{}
	tr := newTestRelay(t, store, func(o *relay.Options) { o.Logger = slog.New(logs) })
	c := tr.client("shop")
	a := storetest.NewEditor(t, "aaaa")
	mustCall[transport.Ack](t, c, pushOf("notes", 0, rec("w", a.Edit(map[string]any{"n": int64(1)}))))
	a.Edit(map[string]any{"n": int64(2)}) // never pushed
	_, err := call[transport.Ack](t, c, pushOf("notes", 0, rec("w", a.Edit(map[string]any{"n": int64(3)}))))
	var te *transport.Error
	if !errors.As(err, &te) || te.Code != transport.CodeInvalidChange {
		t.Fatalf("push after a gap: %v, want invalid_change", err)
	}
	attrs, ok := logs.find(slog.LevelWarn, "push refused: invalid changes")
	if !ok || attrs["collection"] != "notes" || attrs["record"] != "w" || attrs["tenant"] != "shop" {
		t.Fatalf("refusal logged as %v (found %v), want WARN with tenant, collection and record", attrs, ok)
	}
	for k, v := range attrs {
		if strings.Contains(v, tr.tokens["shop"]) {
			t.Fatalf("the log's %s holds the token", k)
		}
	}
}

// The other relay's append event marks relay 1's cached copy of the
// collection's records as to be checked: A's next push (concurrent with
// B's edit, so not refused either way) is merged onto the store's record
// at once, instead of being refused by the store as a conflict and merged
// again.
func TestStoreEventRefreshesCachedRecord(t *testing.T) {
	mem := memstore.New()
	shared := &sharedStore{Store: unclosed{mem}}
	relays := []*testRelay{newTestRelay(t, shared, nil), newTestRelay(t, mem, nil)}
	a, b := storetest.NewEditor(t, "aaaa"), storetest.NewEditor(t, "bbbb")
	ca, cb := relays[0].client("shop"), relays[1].client("shop")
	mustCall[transport.Ack](t, ca, pushOf("notes", 0, rec("w", a.Edit(map[string]any{"a": int64(1)}))))
	mustCall[transport.Ack](t, cb, pushOf("notes", 0, rec("w", b.Edit(map[string]any{"b": int64(1)}))))
	shared.event(relay.StoreEvent{Kind: relay.EventAppended, Coll: relay.Coll{"shop", "notes"}})
	mustCall[transport.Ack](t, ca, pushOf("notes", 0, rec("w", a.Edit(map[string]any{"a": int64(2)}))))
	if n := shared.conflicts.Load(); n != 0 {
		t.Fatalf("relay 1's appends refused as conflicts: %d, want 0", n)
	}
	r, err := mem.Record(context.Background(), relay.Coll{"shop", "notes"}, "w")
	if err != nil {
		t.Fatal(err)
	}
	d, err := crdt.Load(r.Data(), "")
	if err != nil {
		t.Fatal(err)
	}
	f, err := d.Fields()
	if err != nil {
		t.Fatal(err)
	}
	if f["a"] != int64(2) || f["b"] != int64(1) {
		t.Fatalf("stored fields %v, want a=2 b=1", f)
	}
}

// A push to a record another push is queued on (merged, being written)
// depends on an edit that came in through relay 2. The queued document
// was merged without that edit: it takes in what the store holds before
// the push is judged, and both pushes then go through (the queued one
// merged again, once the store refuses its group as a conflict).
func TestPushOntoQueuedRecordBuildsOnAnotherRelaysAppend(t *testing.T) {
	store := memstore.New()
	gated := &gatedStore{Store: unclosed{store}, usages: map[string]int{}}
	relays := []*testRelay{newTestRelay(t, gated, nil), newTestRelay(t, store, nil)}
	a, b, c := storetest.NewEditor(t, "aaaa"), storetest.NewEditor(t, "bbbb"), storetest.NewEditor(t, "cccc")
	ca, cb, cc := relays[0].client("shop"), relays[1].client("shop"), relays[0].client("shop")
	first := a.Edit(map[string]any{"a": int64(1)})
	mustCall[transport.Ack](t, ca, pushOf("notes", 0, rec("w", first))) // relay 1 caches w
	b.Pulled(first)
	fromB := b.Edit(map[string]any{"b": int64(1)})
	mustCall[transport.Ack](t, cb, pushOf("notes", 0, rec("w", fromB))) // through relay 2

	// Relay 1's next append waits until release.
	entered, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	let := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(let) // before the relays close, if the test fails early
	var armed atomic.Bool
	armed.Store(true)
	gated.set(func(g *gatedStore) {
		g.onAppend = func(relay.Coll) error {
			if armed.CompareAndSwap(true, false) {
				entered <- struct{}{}
				<-release
			}
			return nil
		}
	})
	queued := make(chan error, 1)
	go func() {
		_, err := call[transport.Ack](t, ca, pushOf("notes", 0, rec("w", a.Edit(map[string]any{"a": int64(2)}))))
		queued <- err
	}()
	<-entered // A's push is queued on relay 1's outdated copy of w
	joined := relays[0].watchQueue(relay.Coll{"shop", "notes"})
	c.Pulled(first)
	c.Pulled(fromB)
	depending := make(chan error, 1)
	go func() {
		_, err := call[transport.Ack](t, cc, pushOf("notes", 0, rec("w", c.Edit(map[string]any{"c": int64(1)}))))
		depending <- err
	}()
	select { // C's push joins the queue behind A's, or is refused
	case <-joined:
	case err := <-depending:
		t.Fatalf("C's push, building on B's edit through relay 2: %v", err)
	}
	let()
	if err := <-queued; err != nil {
		t.Fatalf("A's queued push: %v", err)
	}
	if err := <-depending; err != nil {
		t.Fatalf("C's push, building on B's edit through relay 2: %v", err)
	}
	r, err := store.Record(context.Background(), relay.Coll{"shop", "notes"}, "w")
	if err != nil {
		t.Fatal(err)
	}
	f := storetest.FieldsAfter(t, r.Data())
	if f["a"] != int64(2) || f["b"] != int64(1) || f["c"] != int64(1) {
		t.Fatalf("stored fields %v, want a=2 b=1 c=1", f)
	}
}

// After another relay's append to the collection (to another record), a
// push to a record relay 1 holds loaded checks it by its heads alone, and
// keeps it: no whole-record read, no reload.
func TestStoreEventCheckReadsHeadsOnly(t *testing.T) {
	mem := memstore.New()
	hs := &headsStore{sharedStore: &sharedStore{Store: unclosed{mem}}}
	relays := []*testRelay{newTestRelay(t, hs, nil), newTestRelay(t, mem, nil)}
	a, b := storetest.NewEditor(t, "aaaa"), storetest.NewEditor(t, "bbbb")
	ca, cb := relays[0].client("shop"), relays[1].client("shop")
	mustCall[transport.Ack](t, ca, pushOf("notes", 0, rec("w", a.Edit(map[string]any{"a": int64(1)}))))
	mustCall[transport.Ack](t, cb, pushOf("notes", 0, rec("v", b.Edit(map[string]any{"b": int64(1)}))))
	hs.event(relay.StoreEvent{Kind: relay.EventAppended, Coll: relay.Coll{"shop", "notes"}})
	records := hs.records.Load()
	mustCall[transport.Ack](t, ca, pushOf("notes", 0, rec("w", a.Edit(map[string]any{"a": int64(2)}))))
	if n := hs.records.Load() - records; n != 0 {
		t.Fatalf("relay 1 read w whole %d times, want 0", n)
	}
	if n := hs.heads.Load(); n != 1 {
		t.Fatalf("relay 1 read w's heads %d times, want 1", n)
	}
	if n := hs.conflicts.Load(); n != 0 {
		t.Fatalf("relay 1's appends refused as conflicts: %d, want 0", n)
	}
}
