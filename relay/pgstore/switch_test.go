package pgstore_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/replica"
)

// alternating dials each new connection to the next of addrs in turn, as
// a load balancer may: one device's syncs go through one relay, then
// another.
type alternating struct {
	mu    sync.Mutex
	addrs []string
	n     int
	used  map[string]int
}

func (a *alternating) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	a.mu.Lock()
	addr := a.addrs[a.n%len(a.addrs)]
	a.n++
	a.used[addr]++
	a.mu.Unlock()
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

// Two devices sync one collection through two relays on one database,
// each sync through the other relay than the last (one profile, behind a
// load balancer), editing one record on distinct fields and on one field
// both set, and adding records of their own: nothing is lost, and both
// end with the same records.
func TestDevicesSwitchingRelays(t *testing.T) {
	cl := newCluster(t, 2)
	var addrs []string
	for _, u := range cl.urls {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, pu.Host)
	}
	ctx := context.Background()
	type device struct {
		name string
		r    *replica.Replica
		lb   *alternating
	}
	var devs []*device
	for i, name := range []string{"a", "b"} {
		// Each device starts on another relay.
		lb := &alternating{addrs: addrs, n: i, used: map[string]int{}}
		r, err := replica.Open(t.TempDir(), &replica.Options{
			Relaxed: true, GCInterval: -1,
			TokenSource: replica.StaticToken(cl.token),
			HTTPClient:  &http.Client{Transport: &http.Transport{DialContext: lb.dial}},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		if err := r.AddProfile(replica.Profile{Name: "lb", URL: "ws://relays.invalid/ws", APIKey: cl.app.APIKey,
			Mode: policy.Manual, Type: policy.TwoWay, Collections: []string{"notes"}}); err != nil {
			t.Fatal(err)
		}
		devs = append(devs, &device{name: name, r: r, lb: lb})
	}
	sync := func(d *device) {
		t.Helper()
		if _, err := d.r.Sync(ctx, "lb"); err != nil {
			t.Fatalf("device %s sync: %v", d.name, err)
		}
	}
	if err := devs[0].r.Collection("notes").Put("shared", map[string]any{"last": ""}); err != nil {
		t.Fatal(err)
	}
	sync(devs[0])
	sync(devs[1])
	want := map[string]map[string]any{"shared": {}}
	const rounds = 8
	for i := range rounds {
		for _, d := range devs {
			c := d.r.Collection("notes")
			own := fmt.Sprintf("%s-%d", d.name, i)
			if err := c.Put(own, map[string]any{"by": d.name, "round": int64(i)}); err != nil {
				t.Fatal(err)
			}
			want[own] = map[string]any{"by": d.name, "round": int64(i)}
			field := fmt.Sprintf("%s%d", d.name, i)
			if err := c.Update("shared", func(doc *crdt.Doc) error {
				if err := doc.Set(crdt.Path{field}, int64(i)); err != nil {
					return err
				}
				return doc.Set(crdt.Path{"last"}, d.name+field)
			}); err != nil {
				t.Fatal(err)
			}
			want["shared"][field] = int64(i)
			sync(d)
		}
	}
	// Both take in the last edits.
	sync(devs[0])
	sync(devs[1])
	sync(devs[0])

	var got []map[string]map[string]any
	for _, d := range devs {
		recs := map[string]map[string]any{}
		for rec, err := range d.r.Collection("notes").Scan(replica.ScanOptions{}) {
			if err != nil {
				t.Fatal(err)
			}
			recs[rec.ID] = rec.Fields
		}
		got = append(got, recs)
		if len(d.lb.used) != 2 {
			t.Fatalf("device %s's syncs went through %v, want both relays", d.name, d.lb.used)
		}
	}
	for id, fields := range want {
		for _, recs := range got {
			for k, v := range fields {
				if recs[id][k] != v {
					t.Fatalf("record %s field %s = %v, want %v", id, k, recs[id][k], v)
				}
			}
		}
	}
	if !slices.Equal(slices.Sorted(maps.Keys(got[0])), slices.Sorted(maps.Keys(got[1]))) || !crdt.Equal(anyMap(got[0]), anyMap(got[1])) {
		t.Fatalf("the devices differ:\na %v\nb %v", got[0], got[1])
	}
}

func anyMap(m map[string]map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	return out
}
