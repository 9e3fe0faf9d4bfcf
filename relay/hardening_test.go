package relay_test

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// gateStore wraps a Store so a test can hold the next Append until it says
// so, or make Appends fail with a *ConflictError, as when another relay
// process wrote the record first.
type gateStore struct {
	relay.Store
	entered chan struct{} // a held Append has started waiting

	mu        sync.Mutex
	appends   int
	hold      chan struct{} // the next Append waits for it to close
	conflicts int           // the next this many Appends conflict
}

func newGateStore() *gateStore {
	return &gateStore{Store: memstore.New(), entered: make(chan struct{}, 1)}
}

func (g *gateStore) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	g.mu.Lock()
	g.appends++
	hold := g.hold
	g.hold = nil
	conflict := g.conflicts > 0
	if conflict {
		g.conflicts--
	}
	g.mu.Unlock()
	if hold != nil {
		g.entered <- struct{}{}
		<-hold
	}
	if conflict {
		return 0, &relay.ConflictError{Record: entries[0].Record}
	}
	return g.Store.Append(ctx, c, fence, now, entries)
}

func (g *gateStore) holdNext() (release func()) {
	ch := make(chan struct{})
	g.mu.Lock()
	g.hold = ch
	g.mu.Unlock()
	return func() { close(ch) }
}

func (g *gateStore) conflictNext(n int) {
	g.mu.Lock()
	g.conflicts = n
	g.mu.Unlock()
}

func (g *gateStore) appendCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.appends
}

// watchQueue reports the queue length each time a push joins the
// collection's commit queue.
func (tr *testRelay) watchQueue(c relay.Coll) <-chan int {
	ch := make(chan int, 16)
	tr.srv.SetQueuedHook(c, func(n int) { ch <- n })
	return ch
}

// follow returns an editor holding the changes in parts, as a device that
// pulled them.
func follow(t *testing.T, actor string, parts ...[]byte) *storetest.Editor {
	t.Helper()
	e := storetest.NewEditor(t, actor)
	for _, p := range parts {
		e.Pulled(p)
	}
	return e
}

type pushResult struct {
	ack *transport.Ack
	err error
}

func pushAsync(t *testing.T, c *transport.Client, p *transport.Push) <-chan pushResult {
	ch := make(chan pushResult, 1)
	go func() {
		ack, err := call[transport.Ack](t, c, p)
		ch <- pushResult{ack, err}
	}()
	return ch
}

// TestStaleFenceFailsOnlyItsPush: a push refused for its stale fence fails
// alone; a push queued behind it, for the same record, with fence 0, was
// merged onto the refused push's document, and is merged again onto what
// the store holds, stored and acknowledged.
func TestStaleFenceFailsOnlyItsPush(t *testing.T) {
	gs := newGateStore()
	tr := newTestRelay(t, gs, nil)
	a, _, _ := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "dev-a")
	b, _, _ := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "dev-b")
	c, _, _ := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "dev-c")
	coll := relay.Coll{Tenant: "shop", Collection: "c"}

	la := mustCall[transport.Lease](t, a, &transport.LeaseAcquire{Collection: "c", TTLMS: 10_000})
	base := storetest.NewEditor(t, "ab01").Edit(map[string]any{"base": 1})
	mustCall[transport.Ack](t, a, pushOf("c", la.Fence, rec("r", base)))
	tr.clock.Advance(11 * time.Second) // a's lease lapses; b takes it
	mustCall[transport.Lease](t, b, &transport.LeaseAcquire{Collection: "c", TTLMS: 10_000})

	ea, ec := follow(t, "ab02", base), follow(t, "ab03", base)
	queued := tr.watchQueue(coll)
	release := gs.holdNext()
	stale := pushAsync(t, a, pushOf("c", la.Fence, rec("r", ea.Edit(map[string]any{"a": 1}))))
	<-queued
	<-gs.entered // a's push is being appended
	fresh := pushAsync(t, c, pushOf("c", 0, rec("r", ec.Edit(map[string]any{"c": 1}))))
	<-queued // c's push waits behind it, merged onto a's document
	release()

	if r := <-stale; !errors.Is(r.err, transport.ErrStaleFence) {
		t.Fatalf("push with the stale fence: %v, want stale_fence", r.err)
	}
	r := <-fresh
	if r.err != nil {
		t.Fatalf("push queued behind the stale one: %v", r.err)
	}
	if r.ack.Seq != 2 {
		t.Errorf("ack seq %d, want 2", r.ack.Seq)
	}
	heads, _ := crdt.HeadsFromSlices(r.ack.Records[0].Heads)
	if !heads.Equal(ec.Doc.Heads()) {
		t.Errorf("acked heads %v, want the device's %v", heads, ec.Doc.Heads())
	}
	doc, _, err := relay.Document(context.Background(), tr.store, coll, "r")
	if err != nil {
		t.Fatal(err)
	}
	if f := storetest.FieldsAfter(t, doc); f["c"] != int64(1) || f["base"] != int64(1) || f["a"] != nil {
		t.Errorf("stored record = %v, want base and c, without the refused a", f)
	}
	if h, _ := tr.store.Head(context.Background(), coll); h != 2 {
		t.Errorf("log head %d, want 2", h)
	}
	// The cached document is the stored one: a later push merges onto it.
	mustCall[transport.Ack](t, c, pushOf("c", 0, rec("r", ec.Edit(map[string]any{"c": 2}))))
	doc, _, _ = relay.Document(context.Background(), tr.store, coll, "r")
	if f := storetest.FieldsAfter(t, doc); f["c"] != int64(2) || f["a"] != nil {
		t.Errorf("record after a later push = %v", f)
	}
}

// TestConflictIsMergedAgain: an Append that fails with ErrConflict is
// merged again from the store and committed, not answered as internal.
func TestConflictIsMergedAgain(t *testing.T) {
	gs := newGateStore()
	tr := newTestRelay(t, gs, nil)
	a := tr.client("shop")
	gs.conflictNext(1)
	ed := storetest.NewEditor(t, "cf01")
	ack, err := call[transport.Ack](t, a, pushOf("c", 0, rec("r", ed.Edit(map[string]any{"v": 1}))))
	if err != nil {
		t.Fatalf("push after one conflict: %v", err)
	}
	if ack.Seq != 1 || gs.appendCount() != 2 {
		t.Errorf("ack seq %d after %d appends; want 1 after 2", ack.Seq, gs.appendCount())
	}
	doc, _, err := relay.Document(context.Background(), tr.store, relay.Coll{Tenant: "shop", Collection: "c"}, "r")
	if err != nil || storetest.FieldsAfter(t, doc)["v"] != int64(1) {
		t.Fatalf("stored record: %v", err)
	}
}

// TestConflictRetryIsBounded: a record that keeps conflicting is merged
// relay.MaxMerges times, then the device is told to retry with conflict; nothing
// is stored.
func TestConflictRetryIsBounded(t *testing.T) {
	gs := newGateStore()
	tr := newTestRelay(t, gs, nil)
	a := tr.client("shop")
	gs.conflictNext(1000)
	_, err := call[transport.Ack](t, a, pushOf("c", 0, rec("r", storetest.NewEditor(t, "cf02").Edit(map[string]any{"v": 1}))))
	if !errors.Is(err, transport.ErrConflict) {
		t.Fatalf("push that always conflicts: %v, want conflict", err)
	}
	if n := gs.appendCount(); n != relay.MaxMerges {
		t.Errorf("%d appends, want %d", n, relay.MaxMerges)
	}
	if h, _ := tr.store.Head(context.Background(), relay.Coll{Tenant: "shop", Collection: "c"}); h != 0 {
		t.Errorf("log head %d, want 0", h)
	}
	// Once the store lets it through, the same push is stored.
	gs.conflictNext(0)
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", storetest.NewEditor(t, "cf03").Edit(map[string]any{"v": 2}))))
}

// TestTwoRelaysOneStore: a relay whose cached document is stale, because
// another relay process sharing its store wrote the record, reloads it and
// merges again instead of failing the push.
func TestTwoRelaysOneStore(t *testing.T) {
	store := memstore.New()
	tr1 := newTestRelay(t, store, nil)
	tr2 := newTestRelay(t, store, nil)
	d1, d2 := tr1.client("shop"), tr2.client("shop")

	e1 := storetest.NewEditor(t, "d101")
	c1 := e1.Edit(map[string]any{"one": 1})
	mustCall[transport.Ack](t, d1, pushOf("c", 0, rec("r", c1))) // relay 1 caches r
	e2 := follow(t, "d202", c1)
	mustCall[transport.Ack](t, d2, pushOf("c", 0, rec("r", e2.Edit(map[string]any{"two": 2}))))
	// Relay 1 merges onto its cached document, which lacks "two": the
	// store refuses the append, and relay 1 merges again from the store.
	ack, err := call[transport.Ack](t, d1, pushOf("c", 0, rec("r", e1.Edit(map[string]any{"one": 11}))))
	if err != nil {
		t.Fatalf("push through the relay with a stale cache: %v", err)
	}
	if ack.Seq != 3 {
		t.Errorf("ack seq %d, want 3", ack.Seq)
	}
	doc, _, _ := relay.Document(context.Background(), store, relay.Coll{Tenant: "shop", Collection: "c"}, "r")
	if f := storetest.FieldsAfter(t, doc); f["one"] != int64(11) || f["two"] != int64(2) {
		t.Errorf("stored record = %v", f)
	}
}

// deflateBomb returns a compressed change chunk of about 65 KB that
// inflates to 64 MiB (its checksum is garbage: framing inflates first).
// The DEFLATE stream is one flushed, byte-aligned block of 1 MiB of zeros
// repeated 64 times, then an empty final block: compressing 64 MiB would
// take seconds under the race detector.
func deflateBomb(t *testing.T) []byte {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestCompression)
	w.Write(make([]byte, 1<<20))
	w.Flush()
	stream := append(bytes.Repeat(buf.Bytes(), 64), 1, 0, 0, 0xff, 0xff)
	b := []byte{0x85, 0x6f, 0x4a, 0x83, 1, 2, 3, 4, 2}
	b = binary.AppendUvarint(b, uint64(len(stream)))
	return append(b, stream...)
}

// TestCompressionBombIsRefused: a 65 KB push whose change chunk inflates
// to 64 MiB is refused with too_large once it passes max_inflated, and the
// relay inflates about that much, not 64 MiB.
func TestCompressionBombIsRefused(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	a := tr.client("shop")
	bomb := deflateBomb(t)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	_, err := call[transport.Ack](t, a, pushOf("c", 0, rec("bomb", bomb)))
	runtime.ReadMemStats(&ms)
	if !errors.Is(err, transport.ErrTooLarge) {
		t.Fatalf("bomb push: %v, want too_large", err)
	}
	// The budget is 1 MiB; the whole round trip, client included,
	// allocates a few times that. Inflating the bomb took 165 MB.
	if used := ms.TotalAlloc - before; used > 16<<20 {
		t.Errorf("refusing the bomb allocated %d bytes", used)
	}
	if h, _ := tr.store.Head(context.Background(), relay.Coll{Tenant: "shop", Collection: "c"}); h != 0 {
		t.Errorf("log head %d after the bomb", h)
	}
	// The session goes on.
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", storetest.NewEditor(t, "bb01").Edit(map[string]any{"ok": true}))))
}

// TestInflateBudgetIsPerPush: the budget covers every record of a push
// together, and each push gets a fresh one.
func TestInflateBudgetIsPerPush(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) { o.Limits.MaxInflated = 60_000 })
	a := tr.client("shop")
	compressed := func(actor string) []byte {
		ch := storetest.NewEditor(t, actor).Edit(map[string]any{"text": string(bytes.Repeat([]byte{'q'}, 40_000))})
		_, ln := binary.Uvarint(ch[9:])
		var buf bytes.Buffer
		w, _ := flate.NewWriter(&buf, flate.BestCompression)
		w.Write(ch[9+ln:])
		w.Close()
		out := append(append([]byte{}, ch[:8]...), 2)
		out = binary.AppendUvarint(out, uint64(buf.Len()))
		return append(out, buf.Bytes()...)
	}
	x, y := compressed("ee01"), compressed("ee02")
	if len(x) > 2000 {
		t.Fatalf("compressed change is %d bytes", len(x))
	}
	if _, err := call[transport.Ack](t, a, pushOf("c", 0, rec("x", x), rec("y", y))); !errors.Is(err, transport.ErrTooLarge) {
		t.Fatalf("push inflating 80,000 bytes under a 60,000 budget: %v, want too_large", err)
	}
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("x", x)))
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("y", y)))
	doc, _, _ := relay.Document(context.Background(), tr.store, relay.Coll{Tenant: "shop", Collection: "c"}, "y")
	if s, _ := storetest.FieldsAfter(t, doc)["text"].(string); len(s) != 40_000 {
		t.Errorf("stored text is %d bytes", len(s))
	}
}

// noise returns n incompressible bytes as text.
func noise(rng *rand.Rand, n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[rng.IntN(len(letters))]
	}
	return string(b)
}

// TestRecordSizeContract: a record grows until its document is just under
// max_record; the push that would pass it is refused with too_large and
// stores nothing; and a fresh device, with the relay's limits, pulls the
// whole collection, the max-size record among small ones.
func TestRecordSizeContract(t *testing.T) {
	fieldsDoc := func(t *testing.T, data []byte) *crdt.Doc {
		t.Helper()
		d, err := crdt.Load(data, "")
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	const maxRecord = 64 << 10
	limits := transport.Limits{MaxRecord: maxRecord, MaxFrame: maxRecord + transport.FrameOverhead}
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) { o.Limits = limits })
	a := tr.client("shop")
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	for i := range 10 {
		for _, p := range []string{"a", "z"} {
			id := fmt.Sprint(p, i)
			mustCall[transport.Ack](t, a, pushOf("c", 0, rec(id, storetest.NewEditor(t, fmt.Sprintf("%04x", 0x100+i)).Edit(map[string]any{"id": id}))))
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	big := storetest.NewEditor(t, "b160")
	const step = 2 << 10
	var err error
	for i := 0; err == nil; i++ {
		_, err = call[transport.Ack](t, a, pushOf("c", 0, rec("big", big.Edit(map[string]any{fmt.Sprint("f", i): noise(rng, step)}))))
		if i > 2*maxRecord/step {
			t.Fatal("the record grew past max_record")
		}
	}
	if !errors.Is(err, transport.ErrTooLarge) {
		t.Fatalf("push past max_record: %v, want too_large", err)
	}
	head, _ := tr.store.Head(context.Background(), coll)
	held, heldHeads, _ := relay.Document(context.Background(), tr.store, coll, "big")
	// What max_record bounds is the record saved whole (its stored form
	// may carry a tail not compacted yet).
	saved := fieldsDoc(t, held).Save()
	if len(saved) > maxRecord || len(saved) < maxRecord-2*step {
		t.Fatalf("held document saves to %d bytes; want just under %d", len(saved), maxRecord)
	}
	// Refused means nothing stored.
	big.Edit(map[string]any{"more": noise(rng, step)})
	since, err := big.Doc.ChangesSince(heldHeads)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := call[transport.Ack](t, a, pushOf("c", 0, rec("big", since))); !errors.Is(err, transport.ErrTooLarge) {
		t.Fatalf("second push past max_record: %v", err)
	}
	if h, _ := tr.store.Head(context.Background(), coll); h != head {
		t.Errorf("refused pushes moved the log from %d to %d", head, h)
	}
	// Compared as documents, not stored bytes: the compactor may fold the
	// record's tail into a new snapshot meanwhile.
	if doc, heads, _ := relay.Document(context.Background(), tr.store, coll, "big"); !heads.Equal(heldHeads) || !bytes.Equal(fieldsDoc(t, doc).Save(), saved) {
		t.Errorf("refused pushes changed the stored document")
	}

	// A fresh device whose limits are the relay's pulls everything.
	fresh := tr.clientWith("shop", "fresh", &transport.Options{Limits: limits, PingInterval: -1})
	got := map[string][]byte{}
	pages := 1
	for after := ""; ; pages++ {
		ch := mustCall[transport.Changes](t, fresh, &transport.Pull{Collection: "c", After: after})
		for _, r := range ch.Records {
			got[r.Record] = r.Data
		}
		if !ch.More {
			break
		}
		after = ch.After
	}
	if len(got) != 21 || len(got["big"]) > maxRecord || !fieldsDoc(t, got["big"]).Heads().Equal(heldHeads) {
		t.Fatalf("fresh pull got %d records (big: %d bytes); want 21, big within %d bytes at the held heads", len(got), len(got["big"]), maxRecord)
	}
	if pages < 2 {
		t.Errorf("the max-size record and 20 others came in %d page, more than a frame holds", pages)
	}
	// Incremental pulls of the log work too.
	mustCall[transport.Changes](t, fresh, &transport.Pull{Collection: "c", Cursor: 1})
}

// TestPushDeltaOverMaxRecord: a push naming a record twice cannot store a
// log entry larger than max_record, even when the document stays small.
func TestPushDeltaOverMaxRecord(t *testing.T) {
	const maxRecord = 64 << 10
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.Limits = transport.Limits{MaxRecord: maxRecord, MaxFrame: 4 * maxRecord}
	})
	a := tr.client("shop")
	ed := storetest.NewEditor(t, "de01")
	// Repeated text: tens of kilobytes of changes, a small document.
	c1 := ed.Edit(map[string]any{"x": string(bytes.Repeat([]byte{'x'}, 40_000))})
	c2 := ed.Edit(map[string]any{"y": string(bytes.Repeat([]byte{'y'}, 40_000))})
	if len(ed.Doc.Save()) > maxRecord/4 {
		t.Fatalf("document is %d bytes", len(ed.Doc.Save()))
	}
	if _, err := call[transport.Ack](t, a, pushOf("c", 0, rec("r", c1), rec("r", c2))); !errors.Is(err, transport.ErrTooLarge) {
		t.Fatalf("push of %d bytes for one record: %v, want too_large", len(c1)+len(c2), err)
	}
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", c1)))
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", c2)))
}

// TestRecordValuesCountTowardMaxRecordOps: pushes that each add one
// operation but a large value, each small on the wire and well within
// max_inflated, add up in what the record costs once loaded: a record
// keeps every value its history set. They are taken while the record's
// operations and values (326 bytes to an operation, some 1,600
// operations' worth a push here) fit max_record_ops, and the next is
// refused with too_large, nothing of it stored. Counted
// by operations alone, as they were, such pushes could have built a
// record of a few hundred KB saved that took gigabytes to load.
func TestRecordValuesCountTowardMaxRecordOps(t *testing.T) {
	const value = 512 << 10
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) { o.Limits.MaxRecordOps = 4000 })
	a := tr.client("shop")
	ed := storetest.NewEditor(t, "fe01")
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	for i := range 3 {
		ch := compressChange(t, ed.Edit(map[string]any{fmt.Sprint("blob", i): bytes.Repeat([]byte{'v'}, value)}))
		if len(ch) > 4<<10 {
			t.Fatalf("compressed change of a 512 KiB value is %d bytes", len(ch))
		}
		_, err := call[transport.Ack](t, a, pushOf("c", 0, rec("r", ch)))
		switch {
		case i < 2 && err != nil:
			t.Fatalf("push %d of a 512 KiB value under max_record_ops 4000: %v", i, err)
		case i == 2 && (!errors.Is(err, transport.ErrTooLarge) || !strings.Contains(err.Error(), "max_record_ops")):
			t.Fatalf("a third 512 KiB value past max_record_ops 4000: %v, want too_large naming max_record_ops", err)
		}
	}
	if h, _ := tr.store.Head(context.Background(), coll); h != 2 {
		t.Fatalf("log head %d, want the two pushes taken", h)
	}
}
