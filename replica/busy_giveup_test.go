package replica

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/relaytest"
	"github.com/ferrysync/ferry/transport"
)

// countMessage is a log handler that counts the records with message msg.
type countMessage struct {
	msg string
	n   *atomic.Int64
}

func (h countMessage) Enabled(context.Context, slog.Level) bool { return true }
func (h countMessage) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	return nil
}
func (h countMessage) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countMessage) WithGroup(string) slog.Handler      { return h }

// TestSyncGivesUpOnBusyRelay syncs through a relay whose memory budget
// another device's push holds for as long as the sync runs: every request
// of the sync is answered busy. The sync asks again, then fails with busy
// once its waits would pass the profile's Timeout, leaving its record
// pending; the next sync, once the relay has room, pushes it. Two-way, the
// pull is answered busy; one-way from the device, the push. In a synctest
// bubble on relaytest's in-memory network, so the waits pass on the
// bubble's clock.
func TestSyncGivesUpOnBusyRelay(t *testing.T) {
	for _, typ := range []policy.Type{policy.TwoWay, policy.OneWayFromClient} {
		t.Run(string(typ), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { syncGivesUpOnBusyRelay(t, typ) })
		})
	}
}

func syncGivesUpOnBusyRelay(t *testing.T, typ policy.Type) {
	const timeout = time.Second
	gs := &heldAppendStore{Store: memstore.New(), coll: "b", gate: make(chan struct{}), entered: make(chan struct{})}
	rl := relaytest.Start(t, &relaytest.Options{Pipe: true, Store: gs, Relay: relay.Options{
		// A page (max_frame) is more than the whole budget: a pull is
		// let in only when nothing else holds any of it.
		MaxMemory:  1 << 20,
		MemoryWait: 10 * time.Millisecond,
	}})
	var gateOnce sync.Once
	openGate := func() { gateOnce.Do(func() { close(gs.gate) }) }
	t.Cleanup(openGate) // before the relay's Close, which waits for b's push
	var retries atomic.Int64
	a := pipeDevice(t, rl, Options{Logger: slog.New(countMessage{msg: "relay is busy; asking again", n: &retries})}, "")
	b := pipeDevice(t, rl, Options{}, "")
	for r, coll := range map[*Replica]string{a: "a", b: "b"} {
		p, err := r.Profile("p")
		if err != nil {
			t.Fatal(err)
		}
		// b's push waits on its held append for as long as a's sync
		// runs: its own timeout is far longer.
		p.Collections, p.Timeout = []string{coll}, time.Hour
		if r == a {
			p.Type, p.Timeout = typ, timeout
		}
		if err := r.UpdateProfile(p); err != nil {
			t.Fatal(err)
		}
	}
	idA, err := coll2(t, a, "a").Insert(product{Name: "Tea"})
	if err != nil {
		t.Fatal(err)
	}
	// b's record is many small maps: it costs far more than the budget
	// loaded, so its push is let in alone, and holds the whole budget
	// while its append is held.
	if _, err := coll2(t, b, "b").Insert(smallMaps(2000)); err != nil {
		t.Fatal(err)
	}
	bDone := make(chan error, 1)
	go func() {
		_, err := b.Sync(context.Background(), "p")
		bDone <- err
	}()
	<-gs.entered

	// A sync that never gave up would retry until this deadline: it
	// fails the test instead of spinning the bubble's clock forever.
	ctx, cancel := context.WithTimeout(context.Background(), 20*timeout)
	defer cancel()
	start := time.Now()
	_, err = a.Sync(ctx, "p")
	took := time.Since(start)
	if !errors.Is(err, transport.ErrBusy) || !errors.Is(err, ErrSyncFailed) {
		t.Fatalf("sync through a relay that stays busy: %v (after %v), want %v and busy", err, took, ErrSyncFailed)
	}
	if retries.Load() < 1 {
		t.Fatalf("the sync failed with busy after %v without asking again", took)
	}
	// The waits between requests stay within the timeout; each request
	// adds the relay's memory_wait (10 ms) before its busy answer.
	if took > timeout+timeout/2 {
		t.Fatalf("the sync gave up after %v (%d retries), past the profile's timeout of %v", took, retries.Load(), timeout)
	}
	t.Logf("gave up after %v of the bubble's clock, %d retries", took, retries.Load())
	if k, _ := a.Collection("a").PendingCount(); k != 1 {
		t.Fatalf("%d pending after the sync failed busy, want 1", k)
	}
	if _, err := rl.Store.Record(context.Background(), relay.Coll{Tenant: rl.App.ID, Collection: "a"}, idA); err == nil {
		t.Fatal("the relay holds a's record, though it answered every request busy")
	}

	// Once b's push is written the relay has room: the next sync pushes
	// what the failed one left pending.
	openGate()
	if err := <-bDone; err != nil {
		t.Fatalf("b's sync: %v", err)
	}
	mustSync(t, a, "p")
	if k, _ := a.Collection("a").PendingCount(); k != 0 {
		t.Fatalf("%d pending after the relay had room, want 0", k)
	}
	if _, err := rl.Store.Record(context.Background(), relay.Coll{Tenant: rl.App.ID, Collection: "a"}, idA); err != nil {
		t.Fatalf("a's record on the relay after the next sync: %v", err)
	}
}
