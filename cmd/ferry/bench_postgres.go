package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/ferrysync/ferry/bench"
)

// benchPostgres is `ferry bench --postgres`: the workloads against a relay
// process on its embedded Badger store (the baseline), then against 1, 2,
// ... relay processes on the PostgreSQL database, all measured against the
// same floor, then a table comparing each PostgreSQL figure with the
// Badger relay's from the same run.
type benchPostgres struct {
	dsn    string
	relays []int
	child  bench.Target // how relay processes are started
}

// parseRelayCounts reads --relays: "1,2,3".
func parseRelayCounts(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 16 {
			return nil, fmt.Errorf("--relays %q: want relay counts from 1 to 16, such as 1,2,3", s)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--relays is empty")
	}
	return out, nil
}

// run returns every result: the Badger relay's (the floor first), then
// each PostgreSQL run's in turn.
func (bp benchPostgres) run(ctx context.Context, cfg bench.Config, names []string) ([][]*bench.Result, error) {
	cfg.Relay = bp.child
	base, err := bench.Run(ctx, cfg, names...)
	runs := [][]*bench.Result{base}
	if err != nil {
		return runs, err
	}
	cfg.Floor = &base[0].Floor
	for _, n := range bp.relays {
		cfg.Relay = bench.Target{Mode: bench.Postgres, Command: bp.child.Command, Postgres: bp.dsn, Relays: n}
		cfg.Progress(fmt.Sprintf("bench: %s against %s", strings.Join(names, ", "), cfg.Relay))
		var rs []*bench.Result
		for _, name := range names {
			if strings.EqualFold(name, "W0") {
				continue
			}
			w, err := bench.Lookup(name)
			if err != nil {
				return runs, err
			}
			cfg.Progress(fmt.Sprintf("%s on %s: starting", strings.ToUpper(name), cfg.Relay))
			r, err := w(ctx, cfg)
			if err != nil {
				runs = append(runs, rs)
				return runs, fmt.Errorf("%s on %s: %w", strings.ToUpper(name), cfg.Relay, err)
			}
			rs = append(rs, r)
		}
		runs = append(runs, rs)
	}
	return runs, nil
}

// write prints each run's table, then the comparison.
func (bp benchPostgres) write(w io.Writer, runs [][]*bench.Result, jsonOut bool, runErr error) error {
	if jsonOut {
		out := benchOutput{}
		for _, rs := range runs {
			out.Results = append(out.Results, rs...)
		}
		if runErr != nil {
			out.Error = runErr.Error()
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	for _, rs := range runs {
		if len(rs) == 0 {
			continue
		}
		if err := bench.WriteTable(w, rs); err != nil {
			return err
		}
		fmt.Fprintln(w)
	}
	return writeComparison(w, runs)
}

// writeComparison lists every time, latency and rate of the Badger run
// with each PostgreSQL run's figure and its ratio to the Badger relay's:
// Badger's time ÷ this time, or this rate ÷ Badger's, so 1 means as fast,
// 0.5 half as fast, whatever the metric.
func writeComparison(w io.Writer, runs [][]*bench.Result) error {
	if len(runs) < 2 || len(runs[0]) == 0 {
		return nil
	}
	byName := func(rs []*bench.Result, workload string) *bench.Result {
		for _, r := range rs {
			if r.Workload == workload {
				return r
			}
		}
		return nil
	}
	fmt.Fprintln(w, "PostgreSQL against the Badger relay, same run (ratio: Badger's time / this time, or this rate / Badger's; 1 = as fast)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "workload\tmetric\tbadger\t")
	for _, rs := range runs[1:] {
		if len(rs) > 0 {
			fmt.Fprintf(tw, "%s\tratio\t", rs[0].Relay)
		}
	}
	fmt.Fprintln(tw)
	for _, base := range runs[0] {
		if base.Workload == "W0" {
			continue
		}
		for _, m := range base.Metrics {
			if speed(m, m) == 0 {
				continue
			}
			v, u := bench.Display(m)
			fmt.Fprintf(tw, "%s\t%s\t%s %s\t", base.Workload, m.Name, v, u)
			for _, rs := range runs[1:] {
				if len(rs) == 0 {
					continue
				}
				r := byName(rs, base.Workload)
				var pm bench.Metric
				ok := false
				if r != nil {
					pm, ok = r.Metric(m.Name)
				}
				if !ok || speed(m, pm) == 0 {
					fmt.Fprint(tw, "-\t-\t")
					continue
				}
				pv, pu := bench.Display(pm)
				fmt.Fprintf(tw, "%s %s\t%.2f\t", pv, pu, speed(m, pm))
			}
			fmt.Fprintln(tw)
		}
	}
	return tw.Flush()
}

// speed is how fast b is against a, two figures of one metric: a's time
// ÷ b's for a time (unit s, or s per something), b's rate ÷ a's for a
// rate (unit per s); 0 for other metrics, or a figure of 0.
func speed(a, b bench.Metric) float64 {
	if a.Value <= 0 || b.Value <= 0 || a.Unit != b.Unit {
		return 0
	}
	switch {
	case a.Unit == "s" || strings.HasPrefix(a.Unit, "s/"):
		return a.Value / b.Value
	case strings.HasSuffix(a.Unit, "/s"):
		return b.Value / a.Value
	}
	return 0
}
