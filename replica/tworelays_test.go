package replica

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/relaytest"
)

// Devices on two relays that share one store, as relay processes on one
// PostgreSQL database do.

// linkedStore is one relay's view of a store two relays share: the other
// relay's appends and releases reach it as StoreEvents, as PostgreSQL's
// notifications do. Closing it leaves the shared store open.
type linkedStore struct {
	relay.Store
	other *linkedStore

	mu  sync.Mutex
	fns []func(relay.StoreEvent)
}

var _ relay.StoreEvents = (*linkedStore)(nil)

// linkedPair returns the two relays' views of st.
func linkedPair(st relay.Store) (*linkedStore, *linkedStore) {
	a, b := &linkedStore{Store: st}, &linkedStore{Store: st}
	a.other, b.other = b, a
	return a, b
}

func (s *linkedStore) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	seq, err := s.Store.Append(ctx, c, fence, now, entries)
	if err == nil {
		s.other.tell(relay.StoreEvent{Kind: relay.EventAppended, Coll: c})
	}
	return seq, err
}

func (s *linkedStore) Release(ctx context.Context, c relay.Coll, holder string, fence uint64) error {
	err := s.Store.Release(ctx, c, holder, fence)
	if err == nil {
		s.other.tell(relay.StoreEvent{Kind: relay.EventLeaseReleased, Coll: c})
	}
	return err
}

func (s *linkedStore) tell(e relay.StoreEvent) {
	s.mu.Lock()
	fns := append([]func(relay.StoreEvent){}, s.fns...)
	s.mu.Unlock()
	for _, fn := range fns {
		fn(e)
	}
}

func (s *linkedStore) Watch(fn func(relay.StoreEvent)) (stop func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fns = append(s.fns, fn)
	return func() {}
}

func (s *linkedStore) Heads(ctx context.Context, colls []relay.Coll) ([]uint64, error) {
	out := make([]uint64, len(colls))
	for i, c := range colls {
		h, err := s.Head(ctx, c)
		if err != nil {
			return nil, err
		}
		out[i] = h
	}
	return out, nil
}

func (s *linkedStore) Close() error { return nil }

// liveDevice opens an in-memory replica with a live two-way profile "p"
// of collection c on rl, reached through hc (rl's own client if nil).
func liveDevice(t *testing.T, rl *relaytest.Relay, hc *http.Client, o Options) *Replica {
	t.Helper()
	if hc == nil {
		hc = rl.HTTPClient
	}
	o.InMemory, o.HTTPClient, o.TokenSource = true, hc, StaticToken(rl.Token)
	if o.BackoffMin == 0 {
		o.BackoffMin, o.BackoffMax = 100*time.Millisecond, 2*time.Second
	}
	r := open(t, "", &o)
	err := r.AddProfile(Profile{Name: "p", URL: rl.URL, APIKey: rl.App.APIKey,
		Mode: policy.Live, Type: policy.TwoWay, Collections: []string{"c"},
		Timeout: 10 * time.Second, LeaseTTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Device A, live on relay 1, and device B, live on relay 2, take turns
// editing one record, each edit building on the other's. Every edit
// reaches the other device, nothing stays pending, and no error is left.
func TestLiveDevicesOnTwoRelaysConverge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := memstore.New()
		t.Cleanup(func() { mem.Close() })
		s1, s2 := linkedPair(mem)
		rl1 := relaytest.Start(t, &relaytest.Options{Store: s1, Pipe: true})
		rl2 := relaytest.Start(t, &relaytest.Options{Store: s2, Pipe: true})
		devs := []*Replica{liveDevice(t, rl1, nil, Options{}), liveDevice(t, rl2, nil, Options{})}
		synctest.Wait()
		if err := coll2(t, devs[0], "c").Create("w", map[string]any{"turn": int64(0)}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		const turns = 12
		for turn := 1; turn <= turns; turn++ {
			d := devs[turn%2]
			err := coll2(t, d, "c").Update("w", func(doc *crdt.Doc) error {
				return doc.Set(crdt.Path{"turn"}, int64(turn))
			})
			if err != nil {
				t.Fatalf("turn %d: %v", turn, err)
			}
			synctest.Wait()
			other := devs[(turn+1)%2]
			if f := getFields(t, other, "c", "w"); f["turn"] != int64(turn) {
				t.Fatalf("turn %d: the other device has turn %v", turn, f["turn"])
			}
		}
		time.Sleep(time.Minute) // past any retry, on the bubble's clock
		synctest.Wait()
		var heads []crdt.Heads
		for i, d := range devs {
			c := coll2(t, d, "c")
			if n, _ := c.PendingCount(); n != 0 {
				t.Fatalf("device %d has %d pending", i, n)
			}
			st, _ := d.Status("p")
			if st.State != StateLive || st.LastError != nil {
				t.Fatalf("device %d: state %s, last error %v", i, st.State, st.LastError)
			}
			recs, err := collect(c.Scan(ScanOptions{}))
			if err != nil || len(recs) != 1 {
				t.Fatalf("device %d: records %v (%v)", i, recs, err)
			}
			heads = append(heads, recs[0].Heads)
		}
		if !heads[0].Equal(heads[1]) {
			t.Fatalf("heads differ: %v and %v", heads[0], heads[1])
		}
	})
}
