package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"
)

// Config sizes the workloads and says where the relay runs. The zero value
// of a field means its default; a Config is copied, never modified.
type Config struct {
	Records      int   // W0, W1, W4 records (one creation change each); default 10,000
	Updates      int   // W2 updates; W3 offline edits per replica; default 1,000
	History      int   // W2L updates to its one record; default 10,000
	MergeRecords int   // W3 records both replicas edit; default 100
	Clients      int   // W4 concurrent pushers; default 16
	Subscribers  int   // W4 live subscribers; default 8
	Batch        int   // W4 records per push; default 1 (one change per push, as live mode sends)
	Objects      int   // W7 object-heavy records; default 32
	Growth       []int // W5 sizes; default 1,000, 10,000, 100,000
	MaxGrowth    int   // W5 skips sizes above this; 0: none

	Relay Target

	// Dir holds the replicas' and an in-process or child relay's data, in
	// a folder per workload, removed when it ends. Default: a temporary
	// folder.
	Dir string

	// Progress receives a line now and then on long runs (nil: none). It
	// is called from the goroutine running the workload, never
	// concurrently.
	Progress func(string)

	// Seed makes record contents and edit choices reproducible; 0 picks
	// one (Result.Seed says which).
	Seed uint64

	// Verify makes workloads check their outcome in full (every record's
	// fields on the fresh replica, identical fields after a merge), which
	// costs time outside the measured phases.
	Verify bool

	// Floor is W0's figure for this run; nil makes a workload measure it.
	Floor *Floor
}

func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Records, 10_000)
	def(&c.Updates, 1_000)
	def(&c.History, 10_000)
	def(&c.MergeRecords, 100)
	def(&c.Clients, 16)
	def(&c.Subscribers, 8)
	def(&c.Batch, 1)
	def(&c.Objects, 32)
	if len(c.Growth) == 0 {
		c.Growth = []int{1_000, 10_000, 100_000}
	}
	if c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
	if c.Progress == nil {
		c.Progress = func(string) {}
	}
	return c
}

// Metric is one named figure of a Result.
type Metric struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"` // s, B, changes/s, records/s, count, ...
	// Ratio is the floor's cost ÷ this cost for the same work (see the
	// package comment); 0 where no ratio is meaningful.
	Ratio float64 `json:"ratio,omitempty"`
	Note  string  `json:"note,omitempty"`
}

// Result is what one workload measured.
type Result struct {
	Workload string `json:"workload"` // W0 ... W5, W2L
	Title    string `json:"title"`
	Relay    string `json:"relay,omitempty"` // in-process, child, or the external URL
	Seed     uint64 `json:"seed"`
	Floor    Floor  `json:"floor"` // W0 of the same run
	// EditFloor is raw automerge-go applying the workload's own edits
	// (W2, W2L, W3), the yardstick of their ratios; nil for the others.
	EditFloor *Floor        `json:"edit_floor,omitempty"`
	Metrics   []Metric      `json:"metrics"`
	Notes     []string      `json:"notes,omitempty"`
	Elapsed   time.Duration `json:"elapsed_ns"` // the whole workload, setup included
	// DevicePID is the process W6's device ran in (not the bench's).
	DevicePID int `json:"device_pid,omitempty"`
}

// Metric returns the named metric, if the result has it.
func (r *Result) Metric(name string) (Metric, bool) {
	for _, m := range r.Metrics {
		if m.Name == name {
			return m, true
		}
	}
	return Metric{}, false
}

func (r *Result) add(m Metric) { r.Metrics = append(r.Metrics, m) }

// Floor is raw Automerge taking in Changes changes of Bytes bytes in
// Seconds, the median of Runs (each run's seconds): W0's creation
// changes, or a workload's edits (Result.EditFloor).
type Floor struct {
	Changes int       `json:"changes"`
	Seconds float64   `json:"seconds"`
	Bytes   int64     `json:"bytes"`
	Rate    float64   `json:"changes_per_s"`
	Runs    []float64 `json:"run_seconds,omitempty"`
}

// Time is the floor's time for n changes.
func (f Floor) Time(n int) float64 {
	if f.Rate <= 0 {
		return 0
	}
	return float64(n) / f.Rate
}

// TimeRatio is the floor's time for n changes ÷ secs.
func (f Floor) TimeRatio(n int, secs float64) float64 {
	if secs <= 0 {
		return 0
	}
	return f.Time(n) / secs
}

// BytesRatio is the floor's bytes for n changes ÷ b.
func (f Floor) BytesRatio(n int, b float64) float64 {
	if b <= 0 || f.Changes == 0 {
		return 0
	}
	return float64(f.Bytes) * float64(n) / float64(f.Changes) / b
}

// time adds a duration over n creation changes (W0's kind), and its rate
// in unit (per second), with their ratio to W0.
func (r *Result) time(name string, d time.Duration, n int, unit string) {
	r.timeVs(name, d, n, unit, &r.Floor)
}

// timeVs adds a duration over n changes and its rate in unit (per
// second), with their ratio to f, a floor of the same kind of change (nil:
// no ratio).
func (r *Result) timeVs(name string, d time.Duration, n int, unit string, f *Floor) {
	s := d.Seconds()
	var ratio float64
	if f != nil {
		ratio = f.TimeRatio(n, s)
	}
	r.add(Metric{Name: name, Value: s, Unit: "s", Ratio: ratio})
	if s > 0 && unit != "" {
		r.add(Metric{Name: name + "_rate", Value: float64(n) / s, Unit: unit, Ratio: ratio})
	}
}

// latency adds a latency, with no ratio.
func (r *Result) latency(name string, d time.Duration) {
	r.add(Metric{Name: name, Value: d.Seconds(), Unit: "s"})
}

// latencyVs adds the latency of one change, with its ratio to f's time
// for one change of the same kind.
func (r *Result) latencyVs(name string, d time.Duration, f *Floor) {
	r.add(Metric{Name: name, Value: d.Seconds(), Unit: "s", Ratio: f.TimeRatio(1, d.Seconds())})
}

// Workload runs one workload.
type Workload func(ctx context.Context, cfg Config) (*Result, error)

// Workloads lists every workload by name, in order.
var Workloads = []struct {
	Name, Title string
	Run         Workload
}{
	{"W0", w0Title, W0},
	{"W1", titles["W1"], W1},
	{"W2", titles["W2"], W2},
	{"W2L", titles["W2L"], W2L},
	{"W3", titles["W3"], W3},
	{"W4", titles["W4"], W4},
	{"W5", titles["W5"], W5},
	{"W6", w6Title, W6},
	{"W7", w7Title, W7},
}

var titles = map[string]string{
	"W1":  "bulk: insert, push, fresh pull",
	"W2":  "live latency, replica to replica",
	"W2L": "live latency over a long history of one record",
	"W3":  "offline edits merge",
	"W4":  "relay ingest and fan-out",
	"W5":  "growth: W1 and W4 by size",
}

// Default is what Run runs when given no names: all but W2L and W5, which
// take minutes.
var Default = []string{"W0", "W1", "W2", "W3", "W4"}

// Lookup returns the named workload (W0 ... W7 or W2L, any case).
func Lookup(name string) (Workload, error) {
	for _, w := range Workloads {
		if strings.EqualFold(w.Name, name) {
			return w.Run, nil
		}
	}
	return nil, fmt.Errorf("bench: no workload %q (want W0 to W7, or W2L)", name)
}

// Run measures the floor once, then runs the named workloads (Default if
// none) in order, each with that floor, and returns their results. The
// floor's own result comes first whether or not W0 was named. It stops at
// the first error, returning the results so far.
func Run(ctx context.Context, cfg Config, names ...string) ([]*Result, error) {
	if len(names) == 0 {
		names = Default
	}
	var runs []Workload
	for _, n := range names {
		w, err := Lookup(n)
		if err != nil {
			return nil, err
		}
		runs = append(runs, w)
	}
	cfg = cfg.withDefaults()
	cfg, cleanup, err := cfg.tempDir()
	if err != nil {
		return nil, err
	}
	defer cleanup()
	floor, err := W0(ctx, cfg)
	if err != nil {
		return nil, err
	}
	cfg.Floor = &floor.Floor
	out := []*Result{floor}
	for i, w := range runs {
		if strings.EqualFold(names[i], "W0") {
			continue
		}
		cfg.Progress(fmt.Sprintf("%s: starting", strings.ToUpper(names[i])))
		r, err := w(ctx, cfg)
		if err != nil {
			return out, fmt.Errorf("%s: %w", strings.ToUpper(names[i]), err)
		}
		out = append(out, r)
	}
	return out, nil
}

// tempDir gives the config a folder of its own under Dir (or the system's
// temporary folder); cleanup removes it.
func (c Config) tempDir() (Config, func(), error) {
	d, err := os.MkdirTemp(c.Dir, "ferry-bench-")
	if err != nil {
		return c, nil, fmt.Errorf("bench: %w", err)
	}
	c.Dir = d
	return c, func() { os.RemoveAll(d) }, nil
}

// prepare applies defaults, makes the workload's folder and measures the
// floor if the config has none.
func prepare(ctx context.Context, cfg Config, name string) (Config, *Result, func(), error) {
	cfg = cfg.withDefaults()
	cfg, cleanup, err := cfg.tempDir()
	if err != nil {
		return cfg, nil, nil, err
	}
	if cfg.Floor == nil {
		f, err := W0(ctx, cfg)
		if err != nil {
			cleanup()
			return cfg, nil, nil, err
		}
		cfg.Floor = &f.Floor
	}
	title := titles[name]
	if name == "W7" {
		title = w7Title
	}
	r := &Result{Workload: name, Title: title, Seed: cfg.Seed, Floor: *cfg.Floor, Relay: cfg.Relay.String()}
	return cfg, r, cleanup, nil
}

// errCheck marks a failed sanity check of a workload's outcome.
var errCheck = errors.New("bench: check failed")

func checkf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errCheck, fmt.Sprintf(format, args...))
}

// sortedDurations returns ds sorted, for percentiles.
func sortedDurations(ds []time.Duration) []time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s
}

// percentile returns the p-th percentile (0 to 100) of sorted s, by the
// nearest-rank method.
func percentile(s []time.Duration, p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	k := int(float64(len(s))*p/100+0.9999999) - 1
	return s[min(max(k, 0), len(s)-1)]
}
