package replica

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// The relay fans a's edit out early and b applies it (marking the record
// pending, as the relay may lose it); then the relay loses the group, and
// a, which had no acknowledgement, edits the same field again and pushes
// both edits. b's early copy is behind what the relay now holds, not in
// conflict with it: b must take a's later value, not write the value it
// applied early back over it (which prefer-local would, were it b's own
// edit).
func TestLiveEarlyApplyLostThenEditedAgain(t *testing.T) {
	env := newEarlyEnv(t)
	set := func(v int64) {
		t.Helper()
		if err := env.a.Collection("c").Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, v) }); err != nil {
			t.Fatal(err)
		}
	}
	env.gate.close()
	set(1)
	<-env.gate.waiting
	waitValue(t, env.b, env.feedB, "r", "qty", 1)
	if n, _ := env.b.Collection("c").PendingCount(); n != 1 {
		t.Fatalf("b has %d pending after applying a's edit early, want 1", n)
	}
	set(2) // returned: acknowledged to a's app
	// The relay loses the group; a pushes its changes again, with the new
	// one, as one entry.
	env.gate.open(false, errors.New("the store refused the group"))
	want := func(r *Replica) bool {
		var v map[string]any
		if err := r.Collection("c").Get("r", &v); err != nil {
			t.Fatal(err)
		}
		n, _ := r.Collection("c").PendingCount()
		return v["qty"] == int64(2) && n == 0
	}
	relayQty := func() any {
		doc, _, err := relay.Document(context.Background(), env.base, env.coll, "r")
		if err != nil {
			t.Fatal(err)
		}
		d, err := crdt.Load(doc, "")
		if err != nil {
			t.Fatal(err)
		}
		defer d.Free()
		v, _, _ := d.Lookup(crdt.Path{"qty"})
		return v
	}
	deadline := time.Now().Add(20 * time.Second)
	for !(want(env.a) && want(env.b) && relayQty() == int64(2)) {
		if time.Now().After(deadline) {
			t.Fatalf("no convergence on a's last edit: a %v, b %v, relay qty %v",
				getFields(t, env.a, "c", "r"), getFields(t, env.b, "c", "r"), relayQty())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Stable: nothing writes the early value back afterwards.
	mustSync(t, env.b, "p")
	if v := getFields(t, env.b, "c", "r")["qty"]; v != int64(2) || relayQty() != int64(2) {
		t.Fatalf("after b's sync: b qty %v, relay qty %v; want 2", v, relayQty())
	}
}
