package relay_test

import (
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// TestGroupWaitsForReturningPushes: once a group of two pushes is
// written, the next push to the collection (from one of the two devices,
// pushing again on its ack) waits for as many pushes to begin as that
// group held, so that the other device's next push joins its group
// instead of waiting for its write and then taking one of its own. The
// committer is dropped in between (no push is in progress once both are
// acknowledged): what the group held outlives it.
func TestGroupWaitsForReturningPushes(t *testing.T) {
	h, tr, release := heldRelay(t)
	coll := relay.Coll{"shop", "c"}
	// Not timed: the flusher waits until the pushes come.
	tr.srv.SetGroupWait(time.Hour)
	a, b := tr.client("shop"), tr.client("shop")
	edA, edB := storetest.NewEditor(t, "aa01"), storetest.NewEditor(t, "bb01")
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("a", edA.Edit(map[string]any{"v": 1}))))

	// A group of two: b's push is held reading its new record while a's
	// is ready (see TestGroupTakesPushesMerging).
	gathering := make(chan struct{}, 1)
	hook := func() {
		select {
		case gathering <- struct{}{}:
		default:
		}
	}
	h.armed.Store(true)
	pushB := pushAsync(t, b, pushOf("c", 0, rec("b", edB.Edit(map[string]any{"v": 1}))))
	<-h.entered
	h.armed.Store(false)
	tr.srv.SetGatherHook(coll, hook) // b's push keeps the committer
	pushA := pushAsync(t, a, pushOf("c", 0, rec("a", edA.Edit(map[string]any{"v": 2}))))
	<-gathering
	release()
	if ra, rb := <-pushA, <-pushB; ra.err != nil || rb.err != nil {
		t.Fatalf("pushes: a %v, b %v", ra.err, rb.err)
	}
	if got := h.appendSizes(); len(got) != 2 || got[1] != 2 {
		t.Fatalf("appends of %v entries, want [1 2]", got)
	}

	// A committer of its own, made before the push, to hook.
	tr.srv.SetGatherHook(coll, hook)
	pushA = pushAsync(t, a, pushOf("c", 0, rec("a", edA.Edit(map[string]any{"v": 3}))))
	select {
	case <-gathering:
	case r := <-pushA:
		t.Fatalf("a's next push was written alone (%v), without waiting for b's", r.err)
	}
	pushB = pushAsync(t, b, pushOf("c", 0, rec("b", edB.Edit(map[string]any{"v": 2}))))
	ra, rb := <-pushA, <-pushB
	if ra.err != nil || rb.err != nil {
		t.Fatalf("pushes: a %v, b %v", ra.err, rb.err)
	}
	if got := h.appendSizes(); len(got) != 3 || got[2] != 2 {
		t.Errorf("appends of %v entries, want [1 2 2]: the two devices' next pushes in one append", got)
	}
	if ra.ack.Seq == rb.ack.Seq || max(ra.ack.Seq, rb.ack.Seq) != 5 {
		t.Errorf("acks at seq %d and %d, want 4 and 5", ra.ack.Seq, rb.ack.Seq)
	}
}
