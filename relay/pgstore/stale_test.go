package pgstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/pgtest"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/storetest"
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
	editors := []*storetest.Editor{storetest.NewEditor(t, "aaaa"), storetest.NewEditor(t, "bbbb")}
	cursors := make([]uint64, 2)
	for turn := range 12 {
		i := turn % 2
		ch := must[transport.Changes](t, clients[i], &transport.Pull{Collection: "c", Cursor: cursors[i]})
		cursors[i] = ch.Next
		for _, rc := range ch.Records {
			editors[i].Pulled(rc.Data)
		}
		data := editors[i].Edit(map[string]any{"turn": int64(turn)})
		if _, err := call[transport.Ack](clients[i], push("c", 0, "w", data)); err != nil {
			t.Fatalf("turn %d, through relay %d: %v", turn+1, i+1, err)
		}
	}
}

// RecordHeads reads what Record says a record's heads are, and
// ErrNotFound for a record the store does not hold.
func TestRecordHeads(t *testing.T) {
	st := open(t, pgtest.Schema(t), nil)
	ctx := context.Background()
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	e := storetest.NewEditor(t, "aaaa")
	data := e.Edit(map[string]any{"n": int64(1)})
	infos, err := crdt.ParseChanges(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Append(ctx, c, 0, time.Now(), []relay.Entry{{Record: "w", Changes: data, Hashes: []crdt.Hash{infos[0].Hash}, Heads: e.Doc.Heads()}}); err != nil {
		t.Fatal(err)
	}
	heads, err := st.RecordHeads(ctx, c, "w")
	if err != nil || !heads.Equal(e.Doc.Heads()) {
		t.Fatalf("RecordHeads(w) = %v, %v; want %v", heads, err, e.Doc.Heads())
	}
	if _, err := st.RecordHeads(ctx, c, "absent"); !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("RecordHeads(absent) = %v, want ErrNotFound", err)
	}
}
