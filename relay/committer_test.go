package relay_test

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// bigPush returns a push of records whose changes weigh about n bytes
// each, made by actor.
func bigPush(t *testing.T, rng *rand.Rand, actor string, records, n int) *transport.Push {
	t.Helper()
	p := pushOf("c", 0)
	for i := range records {
		ed := storetest.NewEditor(t, fmt.Sprintf("%s%02x", actor, i))
		p.Records = append(p.Records, rec(fmt.Sprintf("%s-%d", actor, i), ed.Edit(map[string]any{"blob": noise(rng, n)})))
	}
	return p
}

// queueBigPushes holds the store's next Append with a small push in it,
// queues pushes behind it, each from its own device, and releases the
// Append once all of them wait in one queue: they are then written as
// groups the committer chooses.
func queueBigPushes(t *testing.T, tr *testRelay, gs *gateStore, pushes []*transport.Push) []<-chan pushResult {
	t.Helper()
	queued := tr.watchQueue(relay.Coll{"shop", "c"})
	release := gs.holdNext()
	first, _, err := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "dev-first")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Close() })
	small := pushAsync(t, first, pushOf("c", 0, rec("small", storetest.NewEditor(t, "5a11").Edit(map[string]any{"v": 1}))))
	<-queued
	<-gs.entered
	var out []<-chan pushResult
	for i, p := range pushes {
		c, _, err := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], fmt.Sprint("dev-", i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		out = append(out, pushAsync(t, c, p))
		<-queued
	}
	release()
	if r := <-small; r.err != nil {
		t.Fatalf("small push: %v", r.err)
	}
	return out
}

// TestConcurrentLargePushesAllSucceed: large pushes queued together, 10
// MB in all, are all written and every device gets its ack, whether the
// committer's caps split them into groups (caps), the Badger store writes
// one group of all of them in several transactions (store), or a store
// with a smaller transaction limit refuses the group and the committer
// writes it in halves (halves). Once, merged into one Append, they all
// failed.
func TestConcurrentLargePushesAllSucceed(t *testing.T) {
	for _, mode := range []string{"caps", "store", "halves"} {
		t.Run(mode, func(t *testing.T) {
			bs, err := badgerstore.Open(t.TempDir(), &badgerstore.Options{Relaxed: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { bs.Close() })
			var inner relay.Store = bs
			if mode == "halves" {
				inner = &capStore{Store: bs, max: 8 << 20}
			}
			gs := &gateStore{Store: inner, entered: make(chan struct{}, 1)}
			tr := newTestRelay(t, gs, nil)
			if mode != "caps" {
				// No caps: the three go in one Append.
				tr.srv.SetGroupCaps(1<<40, 1<<30)
			}
			rng := rand.New(rand.NewPCG(4, uint64(len(t.Name()))))
			var pushes []*transport.Push
			for i := range 3 {
				// 4 records of 850 KB: 3.4 MB, within one 4 MiB frame.
				pushes = append(pushes, bigPush(t, rng, fmt.Sprintf("b%d", i), 4, 850<<10))
			}
			results := queueBigPushes(t, tr, gs, pushes)
			for i, ch := range results {
				if r := <-ch; r.err != nil {
					t.Errorf("push %d of 3.4 MB: %v", i, r.err)
				}
			}
			coll := relay.Coll{"shop", "c"}
			if h, _ := tr.store.Head(context.Background(), coll); h != 13 {
				t.Errorf("log head %d, want 13", h)
			}
			for _, p := range pushes {
				for _, r := range p.Records {
					if _, _, err := relay.Document(context.Background(), tr.store, coll, r.Record); err != nil {
						t.Errorf("record %s: %v", r.Record, err)
					}
				}
			}
			// First the small push, then the big ones: in one Append
			// (store), in two or more (caps), or in one refused and then
			// two or more (halves).
			switch n := gs.appendCount(); {
			case mode == "store" && n != 2, mode == "caps" && n < 3, mode == "halves" && n < 4:
				t.Errorf("%d appends", n)
			}
		})
	}
}

// capStore refuses, as too large, any Append whose changes weigh more than
// max bytes: a store with a small transaction limit.
type capStore struct {
	relay.Store
	max int
}

func (c *capStore) Append(ctx context.Context, coll relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	n := 0
	for _, e := range entries {
		n += len(e.Changes)
	}
	if n > c.max {
		return 0, fmt.Errorf("%w: %d bytes", relay.ErrAppendTooLarge, n)
	}
	return c.Store.Append(ctx, coll, fence, now, entries)
}

// TestPushTooLargeForTheStore: a push the store cannot write even alone is
// refused with too_large, nothing is stored, and the connection goes on.
func TestPushTooLargeForTheStore(t *testing.T) {
	tr := newTestRelay(t, &capStore{Store: memstore.New(), max: 100 << 10}, nil)
	a := tr.client("shop")
	rng := rand.New(rand.NewPCG(5, 6))
	_, err := call[transport.Ack](t, a, bigPush(t, rng, "c0", 3, 40<<10))
	if !errors.Is(err, transport.ErrTooLarge) {
		t.Fatalf("push of 120 KB to a store that takes 100 KB: %v, want too_large", err)
	}
	if h, _ := tr.store.Head(context.Background(), relay.Coll{"shop", "c"}); h != 0 {
		t.Errorf("log head %d, want 0", h)
	}
	mustCall[transport.Ack](t, a, bigPush(t, rng, "c1", 2, 40<<10))
}

// readGate wraps a Store so a test can hold every record read of one
// tenant, once armed, until it says so.
type readGate struct {
	relay.Store
	tenant  string
	armed   atomic.Bool
	entered chan struct{} // a held read has started waiting
	release chan struct{} // closed: held reads go on
}

func (g *readGate) Record(ctx context.Context, c relay.Coll, record string) (relay.Record, error) {
	if c.Tenant == g.tenant && g.armed.Load() {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		<-g.release
	}
	return g.Store.Record(ctx, c, record)
}

// TestLargePushDoesNotStallOthers: while one app's push of 1,000 records
// is held in its store reads, another app's single-record pushes complete,
// and so does a push of the same app to one of the 1,000 records, cached.
// Had the large push held locks through its reads (striped locks would
// have it hold nearly every stripe), they would wait for it.
func TestLargePushDoesNotStallOthers(t *testing.T) {
	g := &readGate{Store: memstore.New(), tenant: "shop", entered: make(chan struct{}, 1), release: make(chan struct{})}
	tr := newTestRelay(t, g, nil)
	var once sync.Once
	release := func() { once.Do(func() { close(g.release) }) }
	t.Cleanup(release) // before the relay closes, if the test fails first
	a, a2, b := tr.client("shop"), tr.client("shop"), tr.client("rival")
	shared := storetest.NewEditor(t, "a2a2")
	mustCall[transport.Ack](t, a2, pushOf("c", 0, rec("r5", shared.Edit(map[string]any{"v": 1}))))
	g.armed.Store(true)

	big := pushOf("c", 0)
	for i := range 1000 {
		big.Records = append(big.Records, rec(fmt.Sprint("r", i), storetest.NewEditor(t, fmt.Sprintf("a%03x", i)).Edit(map[string]any{"i": int64(i)})))
	}
	bigDone := pushAsync(t, a, big)
	<-g.entered // a's push is reading from the store, and held there
	for i := range 20 {
		// The other app's records are named as app A's are: the locks are
		// per tenant and collection too.
		mustCall[transport.Ack](t, b, pushOf("c", 0, rec(fmt.Sprint("r", i), storetest.NewEditor(t, fmt.Sprintf("b%03x", i)).Edit(map[string]any{"i": int64(i)}))))
	}
	mustCall[transport.Ack](t, a2, pushOf("c", 0, rec("r5", shared.Edit(map[string]any{"v": 2}))))
	select {
	case r := <-bigDone:
		t.Fatalf("app A's push ended while its reads were held: %v", r.err)
	default:
	}
	release()
	if r := <-bigDone; r.err != nil {
		t.Fatalf("app A's push of 1,000 records: %v", r.err)
	}
	if h, _ := tr.store.Head(context.Background(), relay.Coll{"shop", "c"}); h != 1002 {
		t.Errorf("app A's log head %d, want 1002", h)
	}
	if h, _ := tr.store.Head(context.Background(), relay.Coll{"rival", "c"}); h != 20 {
		t.Errorf("app B's log head %d, want 20", h)
	}
	doc, _, _ := relay.Document(context.Background(), tr.store, relay.Coll{"shop", "c"}, "r5")
	if f := storetest.FieldsAfter(t, doc); f["v"] != int64(2) || f["i"] != int64(5) {
		t.Errorf("r5 = %v, want both pushes' fields", f)
	}
}

// compressChange returns the change chunk ch with its body compressed, as
// automerge writes large changes.
func compressChange(t testing.TB, ch []byte) []byte {
	t.Helper()
	if ch[8] != 1 {
		t.Fatalf("chunk type %d, want an uncompressed change", ch[8])
	}
	_, ln := binary.Uvarint(ch[9:])
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestCompression)
	w.Write(ch[9+ln:])
	w.Close()
	out := append(append([]byte{}, ch[:8]...), 2)
	out = binary.AppendUvarint(out, uint64(buf.Len()))
	return append(out, buf.Bytes()...)
}

// TestRecordStaysWithinMaxRecordSaved: a record whose saved document is 40
// bytes under max_record, created by a compressed change that weighs less
// than that document, takes one-field updates (each adds a few bytes to
// it) while its saved document stays within max_record, and an update
// that would pass it is refused with too_large (one that comes near it
// may be refused too). After compaction, a fresh device with the relay's
// limits pulls the record. An estimate from the bytes stored let updates
// grow the saved document past max_record, which no device could pull.
func TestRecordStaysWithinMaxRecordSaved(t *testing.T) {
	const maxRecord = 64 << 10
	limits := transport.Limits{MaxRecord: maxRecord, MaxFrame: maxRecord + transport.FrameOverhead, MaxInflated: 4 * maxRecord}
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.Limits = limits
		o.CompactInterval = -1
	})
	a := tr.client("shop")
	coll := relay.Coll{"shop", "c"}
	// One change of 40 fields of noise and a filler, sized so that the
	// saved document is maxRecord-40 bytes.
	create := func(filler int) (*storetest.Editor, []byte) {
		rng := rand.New(rand.NewPCG(15, 15))
		ed := storetest.NewEditor(t, "f150")
		f := map[string]any{"fill": noise(rng, filler)}
		for i := range 40 {
			f[fmt.Sprint("f", i)] = noise(rng, 2000)
		}
		return ed, compressChange(t, ed.Edit(f))
	}
	lo, hi := 0, 20_000
	for lo < hi {
		k := (lo + hi + 1) / 2
		if ed, _ := create(k); len(ed.Doc.Save()) <= maxRecord-40 {
			lo = k
		} else {
			hi = k - 1
		}
	}
	ed, ch := create(lo)
	// (Saved sizes grow with the filler only roughly: a few bytes off.)
	if n := len(ed.Doc.Save()); n < maxRecord-48 || n > maxRecord-32 || len(ch) >= n {
		t.Fatalf("record saves to %d bytes from a change of %d; want about %d from fewer", n, len(ch), maxRecord-40)
	}
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("big", ch)))

	savedHeld := func() int {
		held, _, err := relay.Document(context.Background(), tr.store, coll, "big")
		if err != nil {
			t.Fatal(err)
		}
		d, err := crdt.Load(held, "")
		if err != nil {
			t.Fatal(err)
		}
		defer d.Free()
		return len(d.Save())
	}
	accepted, last := 0, 0
	for i := 0; ; i++ {
		if i > 50 {
			t.Fatal("50 updates and still no refusal")
		}
		before := ed.Doc.Heads()
		_, err := call[transport.Ack](t, a, pushOf("c", 0, rec("big", ed.Edit(map[string]any{"n": int64(i)}))))
		if errors.Is(err, transport.ErrTooLarge) {
			// Refused at the boundary: the document would have passed
			// max_record, or come within what the relay may refuse
			// early (see TestRecordNeverStoredPastMaxRecord).
			if n := len(ed.Doc.Save()); n <= maxRecord-maxRecord/16 {
				t.Fatalf("update refused although the document would save to %d bytes", n)
			}
			if err := ed.Doc.Reset(before); err != nil {
				t.Fatal(err)
			}
			break
		}
		if err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
		accepted++
		last = savedHeld()
		if n := last; n > maxRecord {
			t.Fatalf("update %d acknowledged; the record now saves to %d bytes, over max_record %d", i, n, maxRecord)
		}
	}
	t.Logf("%d updates accepted, the last leaving %d bytes saved", accepted, last)
	if err := tr.srv.CompactRecord(context.Background(), coll, "big"); err != nil {
		t.Fatal(err)
	}
	rec, err := tr.store.Record(context.Background(), coll, "big")
	if err != nil || rec.TailEntries != 0 {
		t.Fatalf("record after compaction: %d tail entries, %v", rec.TailEntries, err)
	}

	fresh := tr.clientWith("shop", "fresh", &transport.Options{Limits: limits, PingInterval: -1})
	got := mustCall[transport.Changes](t, fresh, &transport.Pull{Collection: "c"})
	if len(got.Records) != 1 || len(got.Records[0].Data) > maxRecord {
		t.Fatalf("fresh pull: %d records", len(got.Records))
	}
	d, err := crdt.Load(got.Records[0].Data, "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	if !d.Heads().Equal(ed.Doc.Heads()) {
		t.Errorf("fresh device has the record at %v, want %v", d.Heads(), ed.Doc.Heads())
	}
}
