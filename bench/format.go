package bench

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
)

// WriteTable writes results as the tables of docs/benchmarks.md: for
// each workload its main figures, with their ratio where a floor of the
// same kind of change gives one, and the target each figure is held to
// and whether this run met it; then the workloads' notes. Values are
// scaled for reading (ms, MiB, ...). A workload this layout does not
// know is listed metric by metric. Every metric is in the JSON output.
func WriteTable(w io.Writer, results []*Result) error {
	if len(results) == 0 {
		return nil
	}
	f := results[0].Floor
	fmt.Fprintf(w, "floor (W0, same run): %s creation changes in %s = %s changes/s (median of %d runs: %s), %s of changes; seed %d\n",
		group(float64(f.Changes)), fmtDuration(f.Seconds), group(f.Rate), len(f.Runs), fmtSeconds(f.Runs), fmtBytes(float64(f.Bytes)), results[0].Seed)
	for _, r := range results {
		if r.Relay != "" {
			how := ""
			if r.Relay == (Target{Mode: Child}).String() {
				how = " (a `ferry relay` process; W1's devices reach it through a byte-counting loopback proxy, one extra local hop; W2's and W3's connect to it directly)"
			}
			fmt.Fprintf(w, "relay: %s%s\n", r.Relay, how)
			break
		}
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tmetric\tvalue\tratio\ttarget\tmet?\t")
	for _, r := range results {
		for i, row := range tableRows(r) {
			name := ""
			if i == 0 {
				name = r.Workload + " " + shortTitle(r)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", name, row.metric, row.value, row.ratio, row.target, row.met)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	for _, r := range results {
		for _, n := range r.Notes {
			fmt.Fprintf(w, "%s: %s\n", r.Workload, n)
		}
		notes := map[string]bool{}
		for _, m := range r.Metrics {
			if m.Note != "" && !notes[m.Note] && strings.Contains(m.Name, "relay_peak_rss") {
				notes[m.Note] = true
				fmt.Fprintf(w, "%s: memory: %s\n", r.Workload, m.Note)
			}
		}
	}
	_, err := fmt.Fprintln(w, "ratio: the floor's time (raw automerge-go doing the same kind of change: W0's creation changes for W1, W4, W5; the workload's own edits for W2, W2L, W3) / the measured time, or raw change bytes / the bytes measured; 1 = raw Automerge, higher is better; blank where no floor does the same work")
	return err
}

// tableRow is one line of a workload's table.
type tableRow struct{ metric, value, ratio, target, met string }

// shortTitle is a workload's name in the table, with its size.
func shortTitle(r *Result) string {
	v := func(name string) string {
		m, _ := r.Metric(name)
		return group(m.Value)
	}
	switch r.Workload {
	case "W0":
		return "floor"
	case "W1":
		return "bulk, " + v("records") + " records"
	case "W2", "W2L":
		return "live, " + v("updates") + " updates"
	case "W3":
		return "merge, 2 × " + group(r.floorChanges()/2) + " edits on " + v("records") + " records"
	case "W4":
		return "ingest, " + v("clients") + " clients, " + v("subscribers") + " subscribers"
	case "W7":
		return "objects, " + v("records") + " records of " + v("ops_per_record") + " operations"
	}
	return r.Title
}

func (r *Result) floorChanges() float64 {
	if r.EditFloor == nil {
		return 0
	}
	return float64(r.EditFloor.Changes)
}

// tableRows returns a workload's lines.
func tableRows(r *Result) []tableRow {
	var rows []tableRow
	// add adds a line of the named metrics' values (one unit if they share
	// it), the ratio of the first if ratio, and a target checked on it.
	add := func(label string, ratio bool, t *target, names ...string) {
		ms := make([]Metric, 0, len(names))
		for _, n := range names {
			if m, ok := r.Metric(n); ok {
				ms = append(ms, m)
			}
		}
		if len(ms) == 0 {
			return
		}
		row := tableRow{metric: label, value: joinValues(ms)}
		if ratio && ms[0].Ratio > 0 {
			row.ratio = fmtRatio(ms[0].Ratio)
		}
		if t != nil {
			row.target, row.met = t.text, yesNo(t.met(ms[0]))
		}
		rows = append(rows, row)
	}
	switch r.Workload {
	case "W0":
		add("import into fresh documents (median run)", false, nil, "import", "import_rate")
		add("change bytes", false, nil, "change_bytes")
	case "W1":
		add("insert (units of 100, durable)", true, nil, "insert", "insert_rate")
		add("push to the relay", true, ratioAtLeast(0.5), "push", "push_rate")
		add("  the relay's own time answering the pushes", true, nil, "push_relay_time")
		add("fresh pull by a new replica", true, ratioAtLeast(0.5), "fresh_pull", "fresh_pull_rate")
		add("bytes on the wire, push / pull", true, nil, "push_wire", "fresh_pull_wire")
		add("relay peak RSS", false, atMost(150<<20, "≤ 150 MiB"), "relay_peak_rss")
	case "W2":
		add("latency p50 / p99 / max (ratio of p50)", true, atMost(1e-3, "p50 ≤ 1 ms"), "latency_p50", "latency_p99", "latency_max")
		add("latency p99", false, atMost(3e-3, "p99 ≤ 3 ms"), "latency_p99")
		add("raw automerge-go applying one such edit", false, nil, "floor_apply")
		add("A's durable commit alone, p50", false, nil, "a_commit_p50")
		add("relay's mean push time, first / last tenth", false, nil, "relay_push_mean_first_tenth", "relay_push_mean_last_tenth")
	case "W2L":
		add("latency p50 / p99", false, nil, "latency_p50", "latency_p99")
		add("p50, first / last tenth", false, nil, "latency_p50_first_tenth", "latency_p50_last_tenth")
		add("p50 growth, last tenth / first", false, atMost(1.2, "≤ 1.2x"), "latency_p50_growth")
		add("relay's mean push time, first / last tenth", false, nil, "relay_push_mean_first_tenth", "relay_push_mean_last_tenth")
		add("A's durable commit p50, first / last tenth", false, nil, "a_commit_p50_first_tenth", "a_commit_p50_last_tenth")
	case "W3":
		add("time to identical documents (syncs)", true, ratioAtLeast(0.7), "merge", "merge_rate")
		add("raw automerge-go applying each side's edits to the other", false, nil, "floor_merge")
		add("syncs / conflicts resolved", false, nil, "syncs", "conflicts")
		add("offline edits on A (durable, one unit of work each)", false, nil, "offline_edit", "offline_edit_rate")
	case "W4":
		add("accepted, durable acks", true, ratioAtLeast(0.5), "ingest_rate", "accepted")
		add("fan-out, send to last subscriber, quiet p50 / p99", false, nil, "fanout_p50", "fanout_p99")
		add("fan-out under load, p50 / p99", false, nil, "fanout_load_p50", "fanout_load_p99")
		add("bytes on the wire", true, nil, "ingest_wire")
		add("relay CPU over the ingest, per change", false, nil, "ingest_relay_cpu", "ingest_relay_cpu_per_change")
		add("clients' CPU over the ingest, per change", false, nil, "ingest_clients_cpu", "ingest_clients_cpu_per_change")
		add("relay peak RSS", false, nil, "relay_peak_rss")
	case "W7":
		add("create: push, durable acks (ratio to loading the same changes)", true, nil, "create", "create_rate")
		add("edit: single-item edits, one per push (ratio to applying them)", true, nil, "edit", "edit_rate")
		add("raw automerge-go, create / edit", false, nil, "floor_create", "floor_edit")
		add("relay CPU, create / edit", false, nil, "create_relay_cpu", "edit_relay_cpu")
		add("relay peak RSS / growth", false, nil, "relay_peak_rss", "relay_rss_growth")
	case "W5":
		for _, m := range r.Metrics {
			if n, ok := strings.CutSuffix(m.Name, "_relay_rss_per_record"); ok {
				p := n + "_"
				kind, size, _ := strings.Cut(n, "_n")
				if kind == "w1" {
					add("W1 at "+group(atof(size))+": insert / push / fresh pull, per record", true, nil, p+"insert", p+"push", p+"fresh_pull")
				} else {
					add("W4 at "+group(atof(size))+": ingest, per record", true, nil, p+"ingest")
				}
				add("  relay RSS growth per record / peak RSS", false, nil, p+"relay_rss_per_record", p+"relay_peak_rss")
			}
		}
	default:
		for _, m := range r.Metrics {
			add(m.Name, true, nil, m.Name)
		}
	}
	return rows
}

// target is what a figure is held to.
type target struct {
	text string
	met  func(Metric) bool
}

func ratioAtLeast(x float64) *target {
	return &target{text: "ratio ≥ " + strconv.FormatFloat(x, 'g', -1, 64), met: func(m Metric) bool { return m.Ratio >= x }}
}

func atMost(x float64, text string) *target {
	return &target{text: text, met: func(m Metric) bool { return m.Value <= x }}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// joinValues shows metrics' values as "a / b unit" when they share a
// unit, else each with its own.
func joinValues(ms []Metric) string {
	vs := make([]string, len(ms))
	us := make([]string, len(ms))
	same := true
	for i, m := range ms {
		vs[i], us[i] = Display(m)
		same = same && us[i] == us[0]
	}
	if same {
		return strings.Join(vs, " / ") + " " + us[0]
	}
	for i := range vs {
		vs[i] += " " + us[i]
	}
	return strings.Join(vs, ", ")
}

func atof(s string) float64 {
	v, _ := strconv.ParseFloat(s, 64)
	return v
}

func fmtSeconds(ss []float64) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmtDuration(s)
	}
	return strings.Join(out, ", ")
}

// Display returns a metric's value and unit scaled for reading.
func Display(m Metric) (value, unit string) {
	base, per, _ := strings.Cut(m.Unit, "/")
	suffix := ""
	if per != "" {
		suffix = "/" + per
	}
	switch {
	case base == "s":
		v, u := scaleDuration(m.Value)
		return v, u + suffix
	case base == "B":
		v, u := scaleBytes(m.Value)
		return v, u + suffix
	case m.Value >= 100 || m.Value == math.Trunc(m.Value):
		return group(m.Value), m.Unit
	}
	return strconv.FormatFloat(m.Value, 'g', 3, 64), m.Unit
}

func scaleDuration(s float64) (string, string) {
	switch {
	case s == 0:
		return "0", "s"
	case s < 1e-3:
		return sig(s * 1e6), "µs"
	case s < 1:
		return sig(s * 1e3), "ms"
	}
	return sig(s), "s"
}

func fmtDuration(s float64) string { v, u := scaleDuration(s); return v + " " + u }

func scaleBytes(b float64) (string, string) {
	switch {
	case b < 1<<10:
		return strconv.FormatFloat(b, 'f', -1, 64), "B"
	case b < 1<<20:
		return sig(b / (1 << 10)), "KiB"
	case b < 1<<30:
		return sig(b / (1 << 20)), "MiB"
	}
	return sig(b / (1 << 30)), "GiB"
}

func fmtBytes(b float64) string { v, u := scaleBytes(b); return v + " " + u }

// sig formats v with three significant digits.
func sig(v float64) string {
	if v >= 1000 {
		return group(v)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

func fmtRatio(r float64) string {
	if r >= 100 {
		return group(r)
	}
	return strconv.FormatFloat(r, 'g', 3, 64)
}

// group formats v rounded to an integer with thousands separators.
func group(v float64) string {
	s := strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
