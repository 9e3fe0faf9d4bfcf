package replica

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/pgtest"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/pgstore"
	"github.com/ferrysync/ferry/relay/relaytest"
)

// TestConvergenceLiveTwoRelaysPostgres runs the convergence workload with
// the devices split between two relays that share one PostgreSQL schema,
// every other device in live mode: each relay learns of the other's
// appends only through the database (its notifications, and the records
// themselves), and devices build on edits that came in through the other
// relay. It needs FERRY_TEST_POSTGRES, and runs in real time (the
// database is outside any synctest bubble): live devices are waited for
// until they hold what the relays hold.
func TestConvergenceLiveTwoRelaysPostgres(t *testing.T) {
	dsn := pgtest.DSN(t)
	for _, seed := range convergenceSeeds(t) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Logf("seed %d (replay with FERRY_CONVERGENCE_SEED=%d)", seed, seed)
			schema := pgtest.Schema(t)
			var relays []*relaytest.Relay
			for range 2 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				st, err := pgstore.Open(ctx, dsn, &pgstore.Options{Schema: schema})
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				relays = append(relays, relaytest.Start(t, &relaytest.Options{Store: st}))
			}
			w := newConvWorld(t, seed, convConfig{live: true, realTime: true})
			w.store, w.tenant = relays[0].Store, relays[0].App.ID
			n := 0
			w.device = func(o *Options, colls ...string) *Replica {
				rl := relays[n%2] // r0, r2 on the first relay; r1, r3 on the second
				n++
				opts := *o
				opts.InMemory, opts.HTTPClient, opts.TokenSource = true, rl.HTTPClient, StaticToken(rl.Token)
				opts.BackoffMin, opts.BackoffMax = 20*time.Millisecond, 500*time.Millisecond
				r := open(t, "", &opts)
				err := r.AddProfile(Profile{Name: "p", URL: rl.URL, APIKey: rl.App.APIKey,
					Mode: policy.Manual, Type: policy.TwoWay, Collections: colls, Timeout: 10 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				return r
			}
			w.run(30)
		})
	}
}

// liveWait bounds how long waitLive waits: it only turns a hang into a
// failure.
const liveWait = time.Minute

// waitLive waits until every online live replica is live and holds, in
// every collection, exactly the records and heads the relays' store holds,
// with nothing pending.
func (w *convWorld) waitLive() {
	w.t.Helper()
	deadline := time.Now().Add(liveWait)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		why := w.liveBehind()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			w.fatalf("live replicas not caught up after %v: %s", liveWait, why)
		}
		<-tick.C
	}
}

// liveBehind says how an online live replica differs from the store, or
// returns "" if none does.
func (w *convWorld) liveBehind() string {
	ctx := context.Background()
	stored := map[string]map[string]crdt.Heads{}
	for _, coll := range convCollections {
		stored[coll] = map[string]crdt.Heads{}
		c := relay.Coll{Tenant: w.tenant, Collection: coll}
		for after := ""; ; {
			recs, err := w.store.Records(ctx, c, after, 100)
			if err != nil {
				return fmt.Sprintf("reading %s from the store: %v", coll, err)
			}
			for _, r := range recs {
				stored[coll][r.ID] = r.Heads
			}
			if len(recs) < 100 {
				break
			}
			after = recs[len(recs)-1].ID
		}
	}
	for _, c := range w.reps {
		if !c.live || c.offline >= w.step {
			continue
		}
		st, err := c.r.Status("p")
		if err != nil || st.State != StateLive {
			return fmt.Sprintf("%s is %s (%v)", c.name, st.State, st.LastError)
		}
		for _, coll := range convCollections {
			col := coll2(w.t, c.r, coll)
			if n, err := col.PendingCount(); err != nil || n != 0 {
				return fmt.Sprintf("%s has %d pending in %s (%v; last error %v)", c.name, n, coll, err, st.LastError)
			}
			recs, err := collect(col.Scan(ScanOptions{Deleted: true}))
			if err != nil {
				return fmt.Sprintf("scan %s on %s: %v", coll, c.name, err)
			}
			var diff []string
			if len(recs) != len(stored[coll]) {
				diff = append(diff, fmt.Sprintf("%d records, the store %d", len(recs), len(stored[coll])))
			}
			for _, r := range recs {
				if h, ok := stored[coll][r.ID]; !ok || !h.Equal(r.Heads) {
					diff = append(diff, r.ID)
				}
			}
			if len(diff) > 0 {
				return fmt.Sprintf("%s differs from the store in %s: %s", c.name, coll, strings.Join(diff, ", "))
			}
		}
	}
	return ""
}
