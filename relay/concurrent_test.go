package relay_test

import (
	"context"
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

// compactRaceStore wraps a Store to force the two orders in which a push
// and a compaction of its record can cross. The first Compact waits until
// an Append has landed since it began (its snapshot is then behind the
// record, whose later entries must stay in the tail); the second lets the
// next Append begin and hold until the snapshot is stored (a push merged
// before the compaction is written after it). Once done is closed no more
// pushes come, and nothing waits. Each Append that lands wakes the
// compaction loop.
type compactRaceStore struct {
	relay.Store
	done   <-chan struct{} // every pusher has finished
	parked chan struct{}   // closed when the first Compact starts to wait
	armed  chan struct{}   // closed when the second Compact starts to wait
	wake   chan struct{}   // an Append landed

	mu     sync.Mutex
	calls  int
	landed chan struct{} // closed, and replaced, when an Append lands
	ahead  *aheadOf      // taken by the next Append

	compactions, behind, between atomic.Int64
}

// aheadOf is a compaction that the next Append lets go first.
type aheadOf struct{ entered, stored chan struct{} }

func newCompactRaceStore(inner relay.Store, done <-chan struct{}) *compactRaceStore {
	return &compactRaceStore{Store: inner, done: done, parked: make(chan struct{}), armed: make(chan struct{}),
		wake: make(chan struct{}, 1), landed: make(chan struct{})}
}

func (s *compactRaceStore) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	s.mu.Lock()
	a := s.ahead
	s.ahead = nil
	s.mu.Unlock()
	if a != nil {
		close(a.entered)
		<-a.stored
	}
	seq, err := s.Store.Append(ctx, c, fence, now, entries)
	if err == nil {
		s.mu.Lock()
		close(s.landed)
		s.landed = make(chan struct{})
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	return seq, err
}

func (s *compactRaceStore) Compact(ctx context.Context, c relay.Coll, record string, snap []byte, upTo uint64) error {
	s.mu.Lock()
	s.calls++
	n, landed := s.calls, s.landed
	s.mu.Unlock()
	switch n {
	case 1:
		close(s.parked)
		select {
		case <-landed:
		case <-s.done:
		}
		select {
		case <-landed:
			s.behind.Add(1)
		default:
		}
	case 2:
		a := &aheadOf{entered: make(chan struct{}), stored: make(chan struct{})}
		s.mu.Lock()
		s.ahead = a
		s.mu.Unlock()
		defer close(a.stored)
		close(s.armed)
		select {
		case <-a.entered:
		case <-s.done:
		}
		select {
		case <-a.entered:
			s.between.Add(1)
		default:
		}
	}
	err := s.Store.Compact(ctx, c, record, snap, upTo)
	if err == nil {
		s.compactions.Add(1)
	}
	return err
}

// Pushes to one hot record from several devices, while a loop compacts
// it and a fresh device pulls the collection: every push is acked or
// refused as retryable, nothing acked is lost, each ack has its one log
// entry, and every snapshot pulled loads.
func TestPushesDuringCompaction(t *testing.T) { onStores(t, pushesDuringCompaction) }

// onStores runs f on a memory store, on a Badger store on disk (every ack
// fsynced), and on a memory store with a document cache too small for one
// document: every document leaves it, and is freed, as soon as no push or
// queued group holds it (one freed while in use panics, crdt.ErrFreed),
// and pushes and compactions read records from the store.
func onStores(t *testing.T, f func(t *testing.T, st relay.Store, tweak func(*relay.Options))) {
	t.Run("memory", func(t *testing.T) { f(t, memstore.New(), nil) })
	t.Run("badger", func(t *testing.T) {
		st, err := badgerstore.Open(t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		f(t, st, nil)
	})
	t.Run("no cache", func(t *testing.T) {
		f(t, memstore.New(), func(o *relay.Options) { o.DocCacheBytes = 1 })
	})
}

// pushed is one push the relay acked.
type pushed struct {
	seq, from uint64
	heads     crdt.Heads
	hashes    []crdt.Hash
}

func pushesDuringCompaction(t *testing.T, inner relay.Store, tweak func(*relay.Options)) {
	done := make(chan struct{})
	st := newCompactRaceStore(inner, done)
	// The test compacts, and keeps the whole log to check it.
	tr := newTestRelay(t, st, func(o *relay.Options) {
		o.CompactInterval, o.LogRetention = -1, -1
		if tweak != nil {
			tweak(o)
		}
	})
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	ctx := context.Background()
	const clients, pushes = 8, 12
	// await bounds a wait that a bug could make endless.
	await := func(ch <-chan struct{}, what string) bool {
		select {
		case <-ch:
			return true
		case <-time.After(10 * time.Second):
			t.Errorf("gave up waiting for %s", what)
			return false
		}
	}
	var pulls, refused atomic.Int64
	// freshPull pulls the collection as a fresh device, checks that each
	// record loads at the heads sent, and returns the hot record's data.
	freshPull := func(c *transport.Client) []byte {
		ch, err := call[transport.Changes](t, c, &transport.Pull{Collection: "c"})
		if errors.Is(err, transport.ErrBusy) {
			return nil
		}
		if err != nil {
			t.Errorf("fresh pull: %v", err)
			return nil
		}
		pulls.Add(1)
		var hot []byte
		for _, r := range ch.Records {
			d, err := crdt.Load(r.Data, "")
			if err != nil {
				t.Errorf("fresh pull of %s at seq %d does not load: %v", r.Record, r.Seq, err)
				continue
			}
			if heads, err := crdt.HeadsFromSlices(r.Heads); err != nil || !d.Heads().Equal(heads) {
				t.Errorf("fresh pull of %s loads at other heads than sent (%v)", r.Record, err)
			}
			d.Free()
			if r.Record == "hot" {
				hot = r.Data
			}
		}
		return hot
	}

	var bg sync.WaitGroup
	bg.Add(2)
	go func() { // compacts the record after each append, until the pushes end
		defer bg.Done()
		for {
			select {
			case <-st.wake:
			case <-done:
				return
			}
			if _, err := tr.srv.CompactRound(ctx); err != nil {
				t.Errorf("compaction round: %v", err)
			}
			if err := tr.srv.CompactRecord(ctx, coll, "hot"); err != nil && !errors.Is(err, transport.ErrBusy) {
				t.Errorf("compacting hot: %v", err)
			}
		}
	}()
	go func() { // a fresh device pulls, over and over
		defer bg.Done()
		c := tr.clientWith("shop", "fresh", &transport.Options{PingInterval: -1})
		for {
			select {
			case <-done:
				return
			default:
			}
			freshPull(c)
		}
	}()

	acked := make([][]pushed, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := tr.clientWith("shop", fmt.Sprint("dev-", i), &transport.Options{PingInterval: -1})
			ed := storetest.NewEditor(t, fmt.Sprintf("%04x", 0x200+i))
			rng := rand.New(rand.NewPCG(uint64(i), 9))
			for j := range pushes {
				// A third of the way, the first compaction waits for these
				// pushes to land; two thirds, the second lets one in after
				// it. Both wait on a push: neither can be missed.
				if j == pushes/3 && !await(st.parked, "the first compaction") ||
					j == 2*pushes/3 && !await(st.armed, "the second compaction") {
					return
				}
				if j%4 == 2 {
					// Build on the others' changes too, as pulled.
					if hot := freshPull(c); hot != nil {
						ed.Pulled(hot)
					}
				}
				data := ed.Edit(map[string]any{fmt.Sprint("k", i): j, fmt.Sprint("pad", i): noise(rng, 300)})
				for try := 0; ; try++ {
					ack, err := call[transport.Ack](t, c, pushOf("c", 0, rec("hot", data)))
					if err == nil {
						heads, herr := crdt.HeadsFromSlices(ack.Records[0].Heads)
						in, perr := crdt.ParseChanges(data)
						if herr != nil || perr != nil {
							t.Errorf("ack %+v: %v, %v", ack, herr, perr)
							return
						}
						p := pushed{seq: ack.Seq, from: ack.From, heads: heads}
						for _, ci := range in {
							p.hashes = append(p.hashes, ci.Hash)
						}
						acked[i] = append(acked[i], p)
						break
					}
					if !errors.Is(err, transport.ErrConflict) && !errors.Is(err, transport.ErrBusy) || try == 10 {
						t.Errorf("client %d push %d, try %d: %v", i, j, try, err)
						return
					}
					refused.Add(1) // nothing stored: the same changes go again
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	bg.Wait()
	if t.Failed() {
		return
	}

	// Each acked push stored its changes once, as one log entry: From is
	// its seq, the log runs 1..n with no hole, and the entry at each seq
	// carries the heads that push was acked with.
	bySeq := map[uint64]pushed{}
	var hashes []crdt.Hash
	for i, ps := range acked {
		if len(ps) != pushes {
			t.Fatalf("client %d: %d pushes acked, want %d", i, len(ps), pushes)
		}
		for _, p := range ps {
			if p.from != p.seq || p.seq == 0 {
				t.Fatalf("client %d: ack stored entries %d..%d, want one", i, p.from, p.seq)
			}
			if _, dup := bySeq[p.seq]; dup {
				t.Fatalf("seq %d acked twice", p.seq)
			}
			bySeq[p.seq] = p
			hashes = append(hashes, p.hashes...)
		}
	}
	log, err := tr.store.Log(ctx, coll, 0, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	if len(log) != len(bySeq) {
		t.Fatalf("log has %d entries for %d acked pushes", len(log), len(bySeq))
	}
	for i, e := range log {
		if e.Seq != uint64(i+1) || e.Record != "hot" || !e.Heads.Equal(bySeq[e.Seq].heads) {
			t.Fatalf("log entry %d: seq %d, record %q, heads not those acked", i, e.Seq, e.Record)
		}
	}
	// The record as stored, snapshot and tail, loads with every acked
	// change, and reads each client's last write.
	data, heads, err := relay.Document(ctx, tr.store, coll, "hot")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := crdt.Load(data, "")
	if err != nil || !doc.Heads().Equal(heads) {
		t.Fatalf("stored hot record does not load at its heads: %v", err)
	}
	for _, h := range hashes {
		if !doc.Has(h) {
			t.Fatalf("acked change %x lost", h[:4])
		}
	}
	f := mustFields(t, doc)
	for i := range clients {
		if f[fmt.Sprint("k", i)] != int64(pushes-1) {
			t.Fatalf("hot record lost client %d's last write: k%d = %v", i, i, f[fmt.Sprint("k", i)])
		}
	}
	if hot := freshPull(tr.client("shop")); !crdt.Equal(storetest.FieldsAfter(t, hot), f) {
		t.Fatal("a fresh pull reads the record differently from the store")
	}
	// Both crossings were forced, and the loop compacted on its own too.
	if st.behind.Load() != 1 || st.between.Load() != 1 || st.compactions.Load() < 2 || pulls.Load() == 0 {
		t.Fatalf("forced crossings: %d behind, %d between; %d compactions, %d pulls", st.behind.Load(), st.between.Load(), st.compactions.Load(), pulls.Load())
	}
	t.Logf("%d pushes acked, %d refused as retryable; %d compactions; %d fresh pulls", len(bySeq), refused.Load(), st.compactions.Load(), pulls.Load())
}

// heldAppendStore holds the first Append after arm until release is
// closed, and notes when that Append has returned.
type heldAppendStore struct {
	relay.Store
	entered, release chan struct{}
	armed            atomic.Bool
	returned         atomic.Bool
}

func (s *heldAppendStore) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	if !s.armed.CompareAndSwap(true, false) {
		return s.Store.Append(ctx, c, fence, now, entries)
	}
	close(s.entered)
	<-s.release
	defer s.returned.Store(true)
	return s.Store.Append(ctx, c, fence, now, entries)
}

// noCloseStore leaves closing the store to its first relay.
type noCloseStore struct{ relay.Store }

func (noCloseStore) Close() error { return nil }

// Close while one push's group is in the store's Append and another push
// is queued behind it: both sessions are cut with shutting_down at once,
// but, as Close documents, merged pushes still finish their appends, and
// Close waits for them. Neither device gets an ack, both pushes are stored
// whole, and pushing them again is acked without storing them twice.
func TestCloseWithPushInFlight(t *testing.T) {
	st := &heldAppendStore{Store: memstore.New(), entered: make(chan struct{}), release: make(chan struct{})}
	tr := newTestRelay(t, st, nil)
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	opts := &transport.Options{PingInterval: -1}
	a, b := tr.clientWith("shop", "a", opts), tr.clientWith("shop", "b", opts)
	edA, edB := storetest.NewEditor(t, "ca01"), storetest.NewEditor(t, "ca02")
	first := edA.Edit(map[string]any{"v": 0})
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("x", first)))
	edB.Pulled(first)
	pushA, pushB := edA.Edit(map[string]any{"a": 1}), edB.Edit(map[string]any{"b": 1})
	// await bounds a wait that a bug could make endless.
	await := func(ch <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("gave up waiting for %s", what)
		}
	}

	st.armed.Store(true)
	errA, errB := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := call[transport.Ack](t, a, pushOf("c", 0, rec("x", pushA)))
		errA <- err
	}()
	await(st.entered, "push a's append")
	queued := make(chan struct{})
	var once sync.Once
	tr.srv.SetQueuedHook(coll, func(int) { once.Do(func() { close(queued) }) })
	go func() {
		_, err := call[transport.Ack](t, b, pushOf("c", 0, rec("x", pushB)))
		errB <- err
	}()
	await(queued, "push b to queue behind a")

	closed := make(chan struct{})
	go func() {
		if err := tr.srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		close(closed)
	}()
	// Both devices are told at once, with the append still held...
	await(a.Done(), "a's session to be cut")
	await(b.Done(), "b's session to be cut")
	for name, ch := range map[string]chan error{"a": errA, "b": errB} {
		if err := <-ch; !errors.Is(err, transport.ErrShuttingDown) {
			t.Errorf("push %s ended with %v, want shutting_down", name, err)
		}
	}
	// ...but Close waits for the append, and for b's after it.
	select {
	case <-closed:
		t.Fatal("Close returned while a push's append was held")
	default:
	}
	close(st.release)
	await(closed, "Close")
	if !st.returned.Load() {
		t.Fatal("Close returned before the held append did")
	}
	noRelayGoroutines(t)

	// Both pushes are stored whole, each as one entry.
	ctx := context.Background()
	log, err := st.Log(ctx, coll, 0, 100)
	if err != nil || len(log) != 3 {
		t.Fatalf("log has %d entries, want 3 (%v)", len(log), err)
	}
	for i, e := range log {
		if e.Seq != uint64(i+1) {
			t.Fatalf("entry %d has seq %d", i, e.Seq)
		}
	}
	data, _, err := relay.Document(ctx, st, coll, "x")
	if err != nil {
		t.Fatal(err)
	}
	if f := storetest.FieldsAfter(t, data); f["v"] != int64(0) || f["a"] != int64(1) || f["b"] != int64(1) {
		t.Fatalf("stored record: %v", f)
	}
	// The devices, told to retry, push again to a new relay: acked, and
	// nothing stored twice.
	tr2 := newTestRelay(t, noCloseStore{st}, nil)
	c := tr2.client("shop")
	for _, p := range [][]byte{pushA, pushB} {
		if ack := mustCall[transport.Ack](t, c, pushOf("c", 0, rec("x", p))); ack.From != 0 || ack.Seq != 3 {
			t.Fatalf("push again: stored entries %d..%d, want none", ack.From, ack.Seq)
		}
	}
}
