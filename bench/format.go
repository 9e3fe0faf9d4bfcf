package bench

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
)

// WriteTable writes results as a table: workload, metric, value, unit,
// ratio to W0. Values are scaled for reading (ms, MiB, ...); the unit
// column says how.
func WriteTable(w io.Writer, results []*Result) error {
	if len(results) == 0 {
		return nil
	}
	f := results[0].Floor
	fmt.Fprintf(w, "floor (W0, same run): %s changes in %s = %s changes/s, %s of changes; seed %d\n",
		group(float64(f.Changes)), fmtDuration(f.Seconds), group(f.Rate), fmtBytes(float64(f.Bytes)), results[0].Seed)
	for _, r := range results {
		if r.Relay != "" {
			how := ""
			if r.Relay == (Target{Mode: Child}).String() {
				how = " (a `ferry relay` process; devices reach it through a byte-counting loopback proxy, one extra local hop)"
			}
			fmt.Fprintf(w, "relay: %s%s\n", r.Relay, how)
			break
		}
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tmetric\tvalue\tunit\tratio to W0\t")
	for _, r := range results {
		for _, m := range r.Metrics {
			v, u := Display(m)
			ratio := ""
			if m.Ratio > 0 {
				ratio = fmtRatio(m.Ratio)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", r.Workload, m.Name, v, u, ratio)
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
	_, err := fmt.Fprintln(w, "ratio: W0's cost / the measured cost for the same number of changes (1 = raw Automerge; higher is better)")
	return err
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
