package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/replica"
)

// collName returns a collection name unique to this run, so runs against
// one external relay never mix.
func collName(workload string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return "bench-" + workload + "-" + hex.EncodeToString(b)
}

// openReplica opens a durable replica on disk in dir/name, with the
// relay's token.
func (e *relayEnv) openReplica(dir, name string, l replica.Listener) (*replica.Replica, error) {
	o := &replica.Options{GCInterval: -1, Listener: l, TokenSource: replica.StaticToken(e.token)}
	r, err := replica.Open(filepath.Join(dir, name), o)
	if err != nil {
		return nil, fmt.Errorf("bench: open replica %s: %w", name, err)
	}
	if h := testHooks.openedReplica; h != nil {
		h(name, r, o)
	}
	return r, nil
}

// profileName is the sync profile every bench replica uses.
const profileName = "bench"

// addProfile gives r a profile syncing coll through the relay. With
// counted, the bytes r moves are counted (see deviceURL).
func (e *relayEnv) addProfile(r *replica.Replica, coll string, mode policy.Mode, counted bool) error {
	return r.AddProfile(replica.Profile{
		Name: profileName, URL: e.deviceURL(counted), APIKey: e.apiKey,
		Mode: mode, Type: policy.TwoWay, Policy: policy.PreferLocal,
		Collections: []string{coll}, Timeout: 2 * time.Minute,
	})
}

// deviceURL is the URL a device syncs through. A child relay's devices
// reach it through the byte-counting proxy where a workload reports the
// bytes they move (counted: W1), and connect to it directly elsewhere
// (W2, W2L, W3): the proxy adds a hop each way, a read and a write of
// every message and the wakes between them, on the cores the relay and
// the devices share, which no real device pays and which a latency
// figure would carry. A replica cannot count its own bytes, as W4's raw
// clients do (dialCounted).
func (e *relayEnv) deviceURL(counted bool) string {
	if counted || e.direct == "" {
		return e.url
	}
	e.directDevices = true
	return e.direct
}

// devicesNote says how the replicas reached a child relay, for a
// workload's notes ("" where they went through the proxy, or no child).
func (e *relayEnv) devicesNote() string {
	if !e.directDevices {
		return ""
	}
	return "devices: connected to the child relay directly, with no byte-counting proxy between them (its bytes are not reported)"
}

// snapshot is the relay's meters at one moment.
type snapshot struct {
	wire int64
	m    map[string]float64
}

func (e *relayEnv) snapshot(ctx context.Context) (snapshot, error) {
	w := e.wire.load()
	m, err := scrape(ctx, e.metricsURL)
	if h := testHooks.scraped; h != nil && err == nil {
		h(m)
	}
	return snapshot{wire: w, m: m}, err
}

// since returns the growth of a /metrics counter from s to t.
func (t snapshot) since(s snapshot, name string) float64 { return t.m[name] - s.m[name] }

// phaseBytes adds the bytes a phase moved: on the wire where the bench
// can count them (their ratio is to the raw bytes of wireChanges
// changes: each change as often as it crossed), and the change payloads
// the relay's /metrics counted (ratio to changes' raw bytes).
func (r *Result) phaseBytes(e *relayEnv, name string, before, after snapshot, wireChanges, changes int, metric string) {
	if e.wire != nil {
		w := float64(after.wire - before.wire)
		note := wireNote(e.mode)
		if e.counted {
			note = "TCP bytes both ways, counted on the clients' own connections to the child relay"
		}
		r.add(Metric{Name: name + "_wire", Value: w, Unit: "B", Ratio: r.Floor.BytesRatio(wireChanges, w), Note: note})
	}
	p := after.since(before, metric)
	r.add(Metric{Name: name + "_payload", Value: p, Unit: "B", Ratio: r.Floor.BytesRatio(changes, p), Note: "relay /metrics " + metric})
}

func wireNote(m Mode) string {
	if m == Postgres {
		return "TCP bytes both ways, counted by the loopback balancer in front of the relays"
	}
	if m == Child {
		return "TCP bytes both ways, counted by a loopback proxy in front of the child relay"
	}
	return "TCP bytes both ways, counted on the relay's listener"
}

// memory adds the relay's memory metrics, per record if n > 0.
func (r *Result) memory(prefix string, st memStats, n int) {
	r.add(Metric{Name: prefix + "relay_peak_rss", Value: float64(st.PeakRSS), Unit: "B", Note: st.Note})
	growth := float64(max(st.PeakRSS-st.Baseline, 0))
	r.add(Metric{Name: prefix + "relay_rss_growth", Value: growth, Unit: "B", Note: "peak minus RSS at the workload's start"})
	if st.PeakHeap > 0 {
		r.add(Metric{Name: prefix + "relay_peak_heap", Value: float64(st.PeakHeap), Unit: "B", Note: "Go heap objects, sampled every 10 ms (whole process; counts Badger's preallocated arenas before they are touched; Automerge's Rust allocations are not Go heap)"})
	}
	if st.CPU > 0 {
		r.add(Metric{Name: prefix + "relay_cpu", Value: st.CPU.Seconds(), Unit: "s", Note: "the child relay's user and system CPU time over the phase, from /proc"})
	}
	if n > 0 {
		r.add(Metric{Name: prefix + "relay_rss_per_record", Value: growth / float64(n), Unit: "B/record"})
	}
}

// progress rate-limits progress lines to one every two seconds, plus the
// last.
type progress struct {
	mu   sync.Mutex
	fn   func(string)
	last time.Time
}

func newProgress(fn func(string)) *progress { return &progress{fn: fn} }

func (p *progress) report(final bool, format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !final && time.Since(p.last) < 2*time.Second {
		return
	}
	p.last = time.Now()
	p.fn(fmt.Sprintf(format, args...))
}

// syncProgress forwards a replica's sync progress.
func syncProgress(p *progress, label string) replica.Listener {
	return replica.Listener{Progress: func(pr replica.Progress) {
		p.report(false, "%s: %s %d/%d records", label, pr.Direction, pr.Done, pr.Total)
	}}
}

// collStats returns the statistics of the one collection a bench profile
// syncs.
func collStats(st *replica.SyncStats) *replica.CollectionStats {
	if st == nil || len(st.Collections) == 0 {
		return &replica.CollectionStats{}
	}
	return st.Collections[0]
}

// closeAll closes what a workload opened, keeping the first error.
func closeAll(err *error, fns ...func() error) {
	for _, f := range fns {
		if cerr := f(); cerr != nil && *err == nil {
			*err = cerr
		}
	}
}
