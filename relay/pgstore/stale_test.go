package pgstore_test

import (
	"testing"

	"github.com/ferrysync/ferry/transport"
)

// Device A on relay 1 and device B on relay 2 take turns editing one
// record, each pulling from its own relay and building on the other's
// last edit. Each relay caches the record it merged a push into, so from
// the third turn on a relay's copy lacks the edit the other relay just
// appended: it must read the store before it refuses the push for a
// missing dependency, whether or not the other relay's notification has
// arrived.
func TestAlternatingEditsAcrossRelays(t *testing.T) {
	cl := newCluster(t, 2)
	clients := []*transport.Client{cl.dial(0, "device-a"), cl.dial(1, "device-b")}
	editors := []*editor{newEditor(t, "aaaa"), newEditor(t, "bbbb")}
	cursors := make([]uint64, 2)
	for turn := range 12 {
		i := turn % 2
		ch := must[transport.Changes](t, clients[i], &transport.Pull{Collection: "c", Cursor: cursors[i]})
		cursors[i] = ch.Next
		for _, rc := range ch.Records {
			if _, err := editors[i].doc.Import(rc.Data); err != nil {
				t.Fatal(err)
			}
		}
		editors[i].at = editors[i].doc.Heads()
		data := editors[i].edit(map[string]any{"turn": int64(turn)})
		if _, err := call[transport.Ack](clients[i], push("c", 0, "w", data)); err != nil {
			t.Fatalf("turn %d, through relay %d: %v", turn+1, i+1, err)
		}
	}
}
