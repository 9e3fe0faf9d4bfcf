package replica

// The live path taken apart: BenchmarkLiveParts runs the round trip of
// BenchmarkLiveRoundTrip (an edit on device A until device B has applied
// it) with each fsync on the path turned off in turn, so the difference
// between two variants is that fsync's share of the latency:
//
//	go test -run='^$' -bench=LiveParts -benchtime=500x ./replica/
//
// and with -cpuprofile for the CPU shares of what is left (docs/benchmarks.md).
// BenchmarkMergeParts does the same for W3's merge of offline edits:
//
//	go test -run='^$' -bench=MergeParts -benchtime=3x ./replica/
//
// It reports the process's CPU time per merge (both devices and the relay:
// what a loaded machine does not hide), and with FERRY_MERGE_PROFILE=PREFIX
// writes a CPU profile of each merge's syncs alone to PREFIX.N, which
// `go tool pprof -top BINARY PREFIX.*` reads as one.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/memstore"
)

// partsVariant is one way of running a path with some of its fsyncs off.
type partsVariant struct {
	name          string
	devicesRelax  bool
	relayStore    string // badger, badger-relaxed, memory
	devicesMemory bool
	noEarlyPush   bool // devices push an edit only once it is durable
	earlyApply    bool // devices take the relay's changes before durable
	badgerSync    bool // devices, and the relay's store, fsync by Badger's DB.Sync (see badgerdir.Syncer.SyncNow)
}

var partsVariants = []partsVariant{
	{name: "durable", relayStore: "badger"},                                         // W2's and W3's path
	{name: "relay-relaxed", relayStore: "badger-relaxed"},                           // no relay fsync
	{name: "devices-relaxed", devicesRelax: true, relayStore: "badger"},             // no device fsync
	{name: "all-relaxed", devicesRelax: true, relayStore: "badger-relaxed"},         // no fsync at all
	{name: "memory", devicesMemory: true, devicesRelax: true, relayStore: "memory"}, // no disk at all
}

// start starts a relay and returns a profile for it and a function that
// opens a device, as the variant says.
func (v partsVariant) start(b *testing.B, mode policy.Mode) (Profile, func() *Replica) {
	var store relay.Store
	var err error
	switch v.relayStore {
	case "memory":
		store = memstore.New()
	default:
		store, err = badgerstore.Open(filepath.Join(b.TempDir(), "relay"), &badgerstore.Options{GCInterval: -1, Relaxed: v.relayStore == "badger-relaxed"})
		if err != nil {
			b.Fatal(err)
		}
	}
	p, o := benchRelayOn(b, store)
	p.Mode = mode
	o.Relaxed = v.devicesRelax
	return p, func() *Replica {
		if v.devicesMemory {
			oo := *o
			oo.InMemory = true
			return open(b, "", &oo)
		}
		return open(b, b.TempDir(), o)
	}
}

func BenchmarkLiveParts(b *testing.B) {
	// W2's path as it was before devices pushed edits while their fsync
	// runs, and with devices also taking the relay's changes while its
	// fsync runs (replica/liveearly.go), for a comparison in the same run.
	before := []partsVariant{
		{name: "durable-no-early", relayStore: "badger", noEarlyPush: true},
		{name: "durable-early-apply", relayStore: "badger", earlyApply: true},
		{name: "durable-badger-sync", relayStore: "badger", badgerSync: true},
		{name: "durable-early-apply-badger-sync", relayStore: "badger", earlyApply: true, badgerSync: true},
		// Which fsync early messages leave on the path: the devices' or
		// the relay's.
		{name: "devices-relaxed-early-apply", devicesRelax: true, relayStore: "badger", earlyApply: true},
		{name: "relay-relaxed-early-apply", relayStore: "badger-relaxed", earlyApply: true},
	}
	for _, v := range append(before, partsVariants...) {
		b.Run(v.name, func(b *testing.B) {
			direct, early := badgerdir.FsyncLogsDirect, earlyApply
			noEarlyPush, earlyApply, badgerdir.FsyncLogsDirect = v.noEarlyPush, v.earlyApply, direct && !v.badgerSync
			defer func() { noEarlyPush, earlyApply, badgerdir.FsyncLogsDirect = false, early, direct }()
			p, openDev := v.start(b, policy.Live)
			livePartsRun(b, p, openDev(), openDev())
		})
	}
}

// BenchmarkMergeParts is W3 (bench.W3) at its default size: devices A and
// B share 100 records, make 1,000 offline single-field edits each, then
// sync A, B, A (manual, two-way, prefer-local) until every record has the
// same heads on both. Only the syncs are timed; it reports the merge's
// p50 over the iterations.
func BenchmarkMergeParts(b *testing.B) {
	const records, edits = 100, 1000
	for _, v := range partsVariants {
		b.Run(v.name, func(b *testing.B) {
			var merges, cpu []time.Duration
			seed := uint64(1)
			profile := os.Getenv("FERRY_MERGE_PROFILE")
			for b.Loop() {
				b.StopTimer()
				p, openDev := v.start(b, policy.Manual)
				devA, devB := openDev(), openDev()
				ids := make([]string, records)
				err := devA.Write(func(tx *Tx) error {
					for i := range ids {
						ids[i] = fmt.Sprintf("rec-%05d", i)
						if err := tx.Create("c", ids[i], map[string]any{"name": "product", "price": 1.5, "qty": int64(i), "updated": int64(0)}); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				for _, r := range []*Replica{devA, devB} {
					if err := r.AddProfile(p); err != nil {
						b.Fatal(err)
					}
					if _, err := r.Sync(ctx, p.Name); err != nil {
						b.Fatal(err)
					}
				}
				for k, r := range []*Replica{devA, devB} {
					rng := rand.New(rand.NewPCG(seed, uint64(k)))
					c := r.Collection("c")
					for range edits {
						id := ids[rng.IntN(records)]
						field := []string{"name", "price", "qty", "updated"}[rng.IntN(4)]
						val := any(rng.Int64N(1000))
						if field == "name" {
							val = fmt.Sprintf("name-%d", rng.IntN(1000))
						}
						if err := c.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{field}, val) }); err != nil {
							b.Fatal(err)
						}
					}
				}
				seed++
				var prof *os.File
				if profile != "" {
					prof = profileTo(b, fmt.Sprintf("%s.%d", profile, seed-1))
				}
				b.StartTimer()
				c0, t0 := processCPU(), time.Now()
				for i, converged := 0, false; !converged; i++ {
					if i == 9 {
						b.Fatal("not converged after 9 syncs")
					}
					if _, err := []*Replica{devA, devB}[i%2].Sync(ctx, p.Name); err != nil {
						b.Fatal(err)
					}
					if i < 2 {
						continue
					}
					converged = true
					for _, id := range ids {
						ha, err := devA.Collection("c").Heads(id)
						if err != nil {
							b.Fatal(err)
						}
						hb, err := devB.Collection("c").Heads(id)
						if err != nil {
							b.Fatal(err)
						}
						converged = converged && ha.Equal(hb)
					}
				}
				merges, cpu = append(merges, time.Since(t0)), append(cpu, processCPU()-c0)
				if prof != nil {
					pprof.StopCPUProfile()
					if err := prof.Close(); err != nil {
						b.Fatal(err)
					}
				}
			}
			slices.Sort(merges)
			slices.Sort(cpu)
			b.ReportMetric(float64(merges[len(merges)/2].Milliseconds()), "merge-p50-ms")
			b.ReportMetric(float64(cpu[len(cpu)/2].Milliseconds()), "cpu-p50-ms")
		})
	}
}

// profileTo starts a CPU profile written to path.
func profileTo(b *testing.B, path string) *os.File {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return f
}

// livePartsRun makes edits on a one at a time, each timed until b's feed
// has it (which may be before a's Update returns), and reports the p50
// and p99 of the round trip and of a's Update call (its commit) alone.
func livePartsRun(b *testing.B, p Profile, devA, devB *Replica) {
	feedB := (&Collection{r: devB, name: "c"}).Watch(1 << 16)
	defer feedB.Close()
	for _, r := range []*Replica{devA, devB} {
		if err := r.AddProfile(p); err != nil {
			b.Fatal(err)
		}
	}
	a := &Collection{r: devA, name: "c"}
	if err := a.Create("live", map[string]any{"name": "product-00000001", "qty": int64(0)}); err != nil {
		b.Fatal(err)
	}
	heads := func() crdt.Heads {
		h, err := a.Heads("live")
		if err != nil {
			b.Fatal(err)
		}
		return h
	}
	waitFor(b, feedB, "live", heads())
	// B's feed is read, and each event timed as it comes, on a goroutine
	// of its own: b may have an edit before a's Update returns (a pushes
	// while its fsync runs), and the edit reached b then.
	events := make(chan stampedEvent, 1<<16)
	go func() {
		defer close(events)
		for ev := range feedB.C {
			events <- stampedEvent{ev, time.Now()}
		}
	}()
	var lat, commit []time.Duration
	i := 0
	for b.Loop() {
		i++
		qty := int64(i)
		t0 := time.Now()
		if err := a.Update("live", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, qty) }); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		at := arrived(b, events, "live", heads())
		lat, commit = append(lat, at.Sub(t0)), append(commit, t1.Sub(t0))
	}
	slices.Sort(lat)
	slices.Sort(commit)
	pct := func(s []time.Duration, p int) float64 { return float64(s[(len(s)-1)*p/100].Microseconds()) }
	b.ReportMetric(pct(lat, 50), "p50-µs")
	b.ReportMetric(pct(lat, 99), "p99-µs")
	b.ReportMetric(pct(commit, 50), "a-commit-p50-µs")
}

// stampedEvent is an event of a feed and when the feed delivered it.
type stampedEvent struct {
	ev Event
	at time.Time
}

// arrived returns when events had record id at heads.
func arrived(tb testing.TB, events <-chan stampedEvent, id string, heads crdt.Heads) time.Time {
	tb.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case se, ok := <-events:
			if !ok {
				tb.Fatal("feed closed")
			}
			if se.ev.ID == id && se.ev.Heads.Equal(heads) {
				return se.at
			}
		case <-timeout:
			tb.Fatalf("no event for %s at %v", id, heads)
		}
	}
}

// benchRelayOn is benchRelay on the given store, which it closes.
func benchRelayOn(tb testing.TB, store relay.Store) (Profile, *Options) {
	tb.Helper()
	app := relay.NewApp("shop")
	auth, err := relay.NewAuth([]relay.App{app}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := relay.NewServer(&relay.Options{Store: store, Auth: auth, PingInterval: -1})
	if err != nil {
		tb.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		hs.Close()
		store.Close()
	})
	token, err := relay.IssueToken(app, relay.TokenRequest{Subject: "bench", TTL: time.Hour, Write: []string{"*"}}, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	return Profile{Name: "p", URL: "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws", APIKey: app.APIKey,
		Mode: policy.Live, Type: policy.TwoWay, Collections: []string{"c"}, Timeout: 10 * time.Second}, &Options{TokenSource: StaticToken(token)}
}

// BenchmarkFsync is the disk's cost of one fsync of a small write, the
// unit every durable step above pays.
func BenchmarkFsync(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "f"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := []byte(fmt.Sprintf("%0200d", 0))
	for b.Loop() {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
}
