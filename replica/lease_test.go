package replica

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/relaytest"
)

// pipeDevice opens an in-memory replica that reaches rl over its
// in-memory network, with a manual two-way profile "p" for collection c.
func pipeDevice(t *testing.T, rl *relaytest.Relay, o Options, pol policy.Policy) *Replica {
	t.Helper()
	o.InMemory, o.HTTPClient = true, rl.HTTPClient
	r := open(t, "", &o)
	err := r.AddProfile(Profile{Name: "p", URL: rl.URL, APIKey: rl.App.APIKey, Token: rl.Token,
		Mode: policy.Manual, Type: policy.TwoWay, Collections: []string{"c"}, Policy: pol,
		Timeout: 10 * time.Second, LeaseTTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The relay grants less than a device asks (max_lease_ttl 2 s for a 10 s
// request). A sync that holds the lease for 3 s, in a slow merge hook,
// renews it by what the relay granted, so its push is not refused as
// stale. Runs on the relay's fake clock in a synctest bubble.
func TestLeaseRenewedByWhatTheRelayGrants(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rl := relaytest.Start(t, &relaytest.Options{Pipe: true, Relay: relay.Options{MaxLeaseTTL: 2 * time.Second}})
		slow := policy.ResolverFunc(func(*policy.Conflict) (policy.Decision, error) {
			time.Sleep(3 * time.Second)
			return policy.Keep(int64(99)), nil
		})
		a := pipeDevice(t, rl, Options{}, "")
		b := pipeDevice(t, rl, Options{MergeHook: slow}, policy.Custom)
		ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
		if err := ca.Create("tea", map[string]any{"price": 10}); err != nil {
			t.Fatal(err)
		}
		mustSync(t, a, "p")
		mustSync(t, b, "p")
		ca.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 12) })
		cb.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 15) })
		mustSync(t, a, "p")
		start := time.Now()
		mustSync(t, b, "p")
		if took := time.Since(start); took < 3*time.Second {
			t.Fatalf("the sync took %v of fake time; the hook alone sleeps 3 s", took)
		}
		mustSync(t, a, "p")
		for _, r := range []*Replica{a, b} {
			if f := getFields(t, r, "c", "tea"); f["price"] != int64(99) {
				t.Fatalf("%s has %v", r.ID()[:6], f)
			}
		}
	})
}
