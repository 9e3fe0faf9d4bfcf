package replica

import (
	"testing"
)

// TestOlderRelayVersionKeepsRecordSynced checks that a relay's version of a
// record older than the one this device last had acknowledged (a live
// session's own earlier push coming back after a later push's
// acknowledgement) does not set the record's synced heads back: the
// record would be pending with nothing of its own to push, and a live
// session, which pushes only what is edited, would leave it pending.
func TestOlderRelayVersionKeepsRecordSynced(t *testing.T) {
	r := mem(t)
	c := coll(t, r, "tally")
	if err := c.Create("t1", map[string]any{"n": int64(1)}); err != nil {
		t.Fatal(err)
	}
	first, err := r.outgoing("tally", "t1")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.acknowledge("tally", []outgoing{first}, false); err != nil {
		t.Fatal(err)
	}
	if err := c.Put("t1", map[string]any{"n": int64(2)}); err != nil {
		t.Fatal(err)
	}
	second, err := r.outgoing("tally", "t1")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.acknowledge("tally", []outgoing{second}, false); err != nil {
		t.Fatal(err)
	}
	// The relay sends the first push back, with the heads it had then.
	if _, err := r.applyBatchThen("tally", []remoteRec{{id: "t1", data: first.changes, relay: first.heads}}, r.mergeOp, nil); err != nil {
		t.Fatal(err)
	}
	if n, err := c.PendingCount(); err != nil || n != 0 {
		ids, _ := c.Pending()
		t.Fatalf("%d pending %v (%v), want none: the relay holds the record as this device has it", n, ids, err)
	}
	_, heads, acked, err := c.pendingChanges("t1")
	if err != nil {
		t.Fatal(err)
	}
	if !acked.Equal(second.heads) || !heads.Equal(second.heads) {
		t.Fatalf("synced heads %v, heads %v, want both %v", acked, heads, second.heads)
	}
}
