package relay_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// A push is framed before it asks for memory: bytes that are no changes
// are refused as such at once, with nothing stored, even while the
// relay's memory is taken (they were told busy, and to retry, before),
// and a good push then still waits for memory.
func TestPushFramedBeforeItWaitsForMemory(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.MaxMemory = 16 << 20
		o.MemoryWait = 10 * time.Millisecond
	})
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	a := tr.client("shop")
	release := tr.srv.Backend().ChargeMemory(16 << 20)
	defer release()
	bad := append([]byte("not an automerge chunk"), make([]byte, 64)...)
	_, err := call[transport.Ack](t, a, pushOf("c", 0, rec("r", bad)))
	var pe *transport.Error
	if !errors.As(err, &pe) || pe.Code != transport.CodeInvalidChange {
		t.Fatalf("push of bytes that are no changes, memory taken: %v, want invalid_change", err)
	}
	change := storetest.NewEditor(t, "aa01").Edit(map[string]any{"v": 1})
	if _, err := call[transport.Ack](t, a, pushOf("c", 0, rec("r", change))); !errors.Is(err, transport.ErrBusy) {
		t.Fatalf("good push with the memory taken: %v, want busy", err)
	}
	if h, _ := tr.store.Head(context.Background(), coll); h != 0 {
		t.Fatalf("the refused pushes moved the log to %d", h)
	}
	release()
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", change)))
}

// Pushes of compressed changes arriving on many connections at once while
// the relay's memory is taken are told busy without being inflated: a
// push inflates nothing until max_inflated is reserved for it. Each of
// these inflates to 3 MiB, within max_inflated; inflated before the
// memory was asked for, as they were, the eight took 24 MiB (and the
// copies framing makes) outside the budget.
func TestCompressedPushInflatesOnlyWithinMemory(t *testing.T) {
	const conns, inflates = 8, 3 << 20
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.MaxMemory = 32 << 20
		o.MemoryWait = 10 * time.Millisecond
		o.Limits = transport.Limits{MaxRecord: 1 << 20, MaxFrame: 1<<20 + transport.FrameOverhead, MaxInflated: 4 << 20}
	})
	// One change, each connection pushing it to a record of its own.
	ch := compressChange(t, storetest.NewEditor(t, "ab01").Edit(map[string]any{"blob": bytes.Repeat([]byte{'z'}, inflates)}))
	clients := make([]*transport.Client, conns)
	pushes := make([]*transport.Push, conns)
	for i := range clients {
		clients[i] = tr.client("shop")
		pushes[i] = pushOf("c", 0, rec(fmt.Sprint("r", i), ch))
	}
	release := tr.srv.Backend().ChargeMemory(32 << 20)
	defer release()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	var wg sync.WaitGroup
	errs := make([]error, conns)
	for i := range clients {
		wg.Go(func() { _, errs[i] = call[transport.Ack](t, clients[i], pushes[i]) })
	}
	wg.Wait()
	runtime.ReadMemStats(&ms)
	for i, err := range errs {
		if !errors.Is(err, transport.ErrBusy) {
			t.Fatalf("push %d of compressed changes with the memory taken: %v, want busy", i, err)
		}
	}
	// The pushes' own bytes (a few KB each) and the round trips take a
	// little; one push inflated takes more than 3 MiB.
	if used := ms.TotalAlloc - before; used > inflates {
		t.Errorf("refusing %d compressed pushes allocated %d bytes: they were inflated outside the memory budget", conns, used)
	}
	release()
	for i := range clients {
		mustCall[transport.Ack](t, clients[i], pushes[i])
	}
}
