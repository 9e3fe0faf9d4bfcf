package relay_test

import (
	"context"
	"errors"
	"fmt"
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

// firstAppendHeld is a store whose first append waits until gate closes.
type firstAppendHeld struct {
	relay.Store
	gate chan struct{}
	once sync.Once
}

func (s *firstAppendHeld) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	s.once.Do(func() { <-s.gate })
	return s.Store.Append(ctx, c, fence, now, entries)
}

// TestMemoryBudgetFlood pushes object-heavy records (some 26 KB each,
// about 13 MiB once loaded) from several clients at once to a relay whose
// memory budget holds two of them being pushed. Every push must be either
// stored whole or refused with busy, having stored nothing; what the
// relay counts in use must stay within the budget; once every client has
// pushed again until stored, a fresh pull must hold every record as
// pushed, and the budget must hold nothing but the cached documents. The
// first push's store append waits for the first refusal, so that the
// budget is reached however the pushes are scheduled.
func TestMemoryBudgetFlood(t *testing.T) {
	const (
		budget  = 40 << 20
		clients = 4
		each    = 1
	)
	store := &firstAppendHeld{Store: memstore.New(), gate: make(chan struct{})}
	var gateOnce sync.Once
	openGate := func() { gateOnce.Do(func() { close(store.gate) }) }
	defer openGate()
	tr := newTestRelay(t, store, func(o *relay.Options) {
		o.MaxMemory = budget
		o.DocCacheBytes = budget / 4
		o.MemoryWait = 20 * time.Millisecond
		o.CompactInterval = -1
	})
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	type record struct {
		id    string
		data  []byte
		heads crdt.Heads
	}
	recs := make([][]record, clients)
	for c := range recs {
		for i := range each {
			data := objectHeavyRecord(t, fmt.Sprintf("%02x%02x", c+1, i+1))
			d, err := crdt.Load(data, "")
			if err != nil {
				t.Fatal(err)
			}
			recs[c] = append(recs[c], record{fmt.Sprintf("c%d-r%d", c, i), data, d.Heads()})
			d.Free()
		}
	}
	tr.srv.MemoryPeak() // from here on

	var (
		mu    sync.Mutex
		busy  int
		wg    sync.WaitGroup
		start = make(chan struct{})
	)
	for c := range clients {
		cl := tr.client("shop")
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for _, r := range recs[c] {
				for {
					_, err := call[transport.Ack](t, cl, pushOf("c", 0, rec(r.id, r.data)))
					if err == nil {
						break
					}
					if !errors.Is(err, transport.ErrBusy) {
						t.Errorf("push of %s: %v, want an ack or busy", r.id, err)
						return
					}
					var te *transport.Error
					if errors.As(err, &te) && te.RetryMS == 0 {
						t.Errorf("busy without retry_ms: %v", err)
					}
					// Refused: nothing of it is stored (each record is
					// pushed by its client alone, whole).
					if _, err := tr.store.Record(context.Background(), coll, r.id); !errors.Is(err, relay.ErrNotFound) {
						t.Errorf("%s refused with busy, then the store has it: %v", r.id, err)
					}
					mu.Lock()
					busy++
					mu.Unlock()
					openGate()
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	peak := tr.srv.MemoryPeak()
	t.Logf("%d clients pushed %d object-heavy records each: %d refused with busy, peak %.1f MiB counted of a %d MiB budget",
		clients, each, busy, mib(peak), budget>>20)
	if peak > budget {
		t.Errorf("the relay counted %.1f MiB in use, over its budget of %d MiB", mib(peak), budget>>20)
	}
	if busy == 0 {
		t.Errorf("no push was refused: the budget was never reached, and the test proves nothing")
	}

	// Load has dropped: every record is stored as pushed, and a device
	// pulling from scratch gets them all.
	pulled := map[string]crdt.Heads{}
	cl := tr.client("shop")
	for p := (&transport.Pull{Collection: "c"}); ; {
		ch := mustCall[transport.Changes](t, cl, p)
		for _, r := range ch.Records {
			h, err := crdt.HeadsFromSlices(r.Heads)
			if err != nil {
				t.Fatal(err)
			}
			pulled[r.Record] = h
		}
		if !ch.More {
			break
		}
		p = &transport.Pull{Collection: "c", After: ch.After}
	}
	for _, rs := range recs {
		for _, r := range rs {
			if !pulled[r.id].Equal(r.heads) {
				t.Errorf("%s pulled at heads %v, pushed at %v", r.id, pulled[r.id], r.heads)
			}
		}
	}
	if used, cached := tr.srv.MemoryInUse(), tr.srv.DocCacheSize(); used != cached {
		t.Errorf("with nothing in progress, %d bytes in use, %d of them cached documents", used, cached)
	}
}

// TestMemoryBudgetRefusesLoad: a push admitted within the budget whose
// record's document does not fit in what is left to load it is refused
// with busy, stores nothing, and gives back everything it held; once
// memory is free, the same push is stored.
func TestMemoryBudgetRefusesLoad(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.MaxMemory = 32 << 20
		o.DocCacheBytes = 1 // nothing stays loaded between pushes
		o.MemoryWait = 10 * time.Millisecond
		o.CompactInterval = -1
	})
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	a := tr.client("shop")
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", objectHeavyRecord(t, "aa01"))))
	head, _ := tr.store.Head(context.Background(), coll)
	base := tr.srv.MemoryInUse()

	// Room for a small push, not for the record's document (some 15 MiB).
	release := tr.srv.HoldMemory(24 << 20)
	ed := storetest.NewEditor(t, "bb02")
	change := ed.Edit(map[string]any{"note": "small"})
	_, err := call[transport.Ack](t, a, pushOf("c", 0, rec("r", change)))
	if !errors.Is(err, transport.ErrBusy) || !strings.Contains(err.Error(), "loading a record") {
		t.Fatalf("push while the record's document does not fit: %v, want busy, loading it", err)
	}
	if h, _ := tr.store.Head(context.Background(), coll); h != head {
		t.Errorf("the refused push moved the log from %d to %d", head, h)
	}
	if used := tr.srv.MemoryInUse(); used != base+24<<20 {
		t.Errorf("after the refusal %d bytes in use, want %d: the push kept some", used, base+24<<20)
	}
	release()
	// The change builds on nothing of r's: it is a record of its own
	// history, merged beside r's as a device's first edit would be.
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", change)))
	if used := tr.srv.MemoryInUse(); used != tr.srv.DocCacheSize() {
		t.Errorf("with nothing in progress %d bytes in use, %d of them cached", used, tr.srv.DocCacheSize())
	}
}

// TestBackendChargeMemory: what an endpoint charges through its Backend
// counts in the budget until released: a push meanwhile is refused with
// busy, and goes through once the charge is released.
func TestBackendChargeMemory(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.MaxMemory = 16 << 20
		o.MemoryWait = 10 * time.Millisecond
	})
	base := tr.srv.MemoryInUse()
	release := tr.srv.Backend().ChargeMemory(16 << 20)
	if used := tr.srv.MemoryInUse(); used != base+16<<20 {
		t.Fatalf("%d bytes in use after charging 16 MiB over %d", used, base)
	}
	a := tr.client("shop")
	change := storetest.NewEditor(t, "aa01").Edit(map[string]any{"v": 1})
	if _, err := call[transport.Ack](t, a, pushOf("c", 0, rec("r", change))); !errors.Is(err, transport.ErrBusy) {
		t.Fatalf("push with the budget charged in full: %v, want busy", err)
	}
	release()
	release()
	if used := tr.srv.MemoryInUse(); used != base {
		t.Fatalf("%d bytes in use after the release, want %d", used, base)
	}
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", change)))
}
