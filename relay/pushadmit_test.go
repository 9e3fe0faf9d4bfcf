package relay_test

import (
	"context"
	"errors"
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
