package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ferrysync/ferry/bench"
)

// BenchCommand runs the benchmark workloads of package bench (W0 to W7,
// and W2L) and prints their figures as a table, or JSON with --json, each
// with its ratio to the floor (W0) measured in the same run. Progress goes
// to Stderr.
type BenchCommand struct {
	Stdout, Stderr io.Writer

	// relayCommand makes the command that runs a child relay (--child);
	// nil means this executable's `relay` subcommand. Tests replace it.
	relayCommand func(ctx context.Context, args []string) *exec.Cmd
}

// benchOutput is the JSON that --json prints.
type benchOutput struct {
	Results []*bench.Result `json:"results"`
	Error   string          `json:"error,omitempty"`
}

const benchHelp = `Usage: ferry bench [flags]

Runs the benchmark workloads (see docs/benchmarks.md) against a relay in
this process, in a child process (--child), or an external one (--relay),
and prints for each its main figures: value, ratio to raw automerge-go
doing the same kind of change (measured in the same run), target, and
whether it was met. --json prints every metric. Progress goes to standard
error.

A quick run (under a minute):

  ferry bench --records 1000 --updates 200

With --postgres, the workloads run against a relay process on its embedded
store, then against --relays relay processes sharing the PostgreSQL
database (each workload in a schema of its own, dropped after), and a last
table compares each PostgreSQL figure with the embedded store's.
`

func (c *BenchCommand) Run(ctx context.Context, args []string) error {
	fs := newFlags("bench")
	f := benchFlags{
		workloads:    fs.String("workloads", strings.Join(bench.Default, ","), "workloads to run, comma-separated (W0 to W7, and W2L: W2 over --history updates; W2L, W5 and W6 take minutes)"),
		records:      fs.Int("records", 10_000, "records of W0, W1 and W4"),
		updates:      fs.Int("updates", 1_000, "W2 live updates, and W3 offline edits per replica"),
		history:      fs.Int("history", 10_000, "W2L live updates, all to one record"),
		mergeRecords: fs.Int("merge-records", 100, "records W3's replicas both edit"),
		clients:      fs.Int("clients", 16, "W4 concurrent pushing clients"),
		subscribers:  fs.Int("subscribers", 8, "W4 live subscribers"),
		batch:        fs.Int("batch", 1, "W4 records per push"),
		objects:      fs.Int("objects", 32, "W7 object-heavy records (2,000 small maps each)"),
		maxGrowth:    fs.Int("max-growth", 0, "W5 skips sizes above this (10000 for a quicker run); 0: none (1,000, 10,000 and 100,000)"),
		relayURL:     fs.String("relay", "", "an external relay's `URL`, ws://host:port/ws (with --api-key and --token); default: one in this process"),
		apiKey:       fs.String("api-key", "", "the external relay's app API key"),
		token:        fs.String("token", "", "a token of that app that may write every collection"),
		child:        fs.Bool("child", false, "run the relay as a child process (ferry relay), to measure its memory apart"),
		jsonOut:      fs.Bool("json", false, "print JSON, every metric with its unit, ratio and note, instead of the tables"),
		seed:         fs.Uint64("seed", 0, "seed for record contents and edits (0: random)"),
		dir:          fs.String("dir", "", "`folder` for the replicas' and relay's data, created if missing (default: the system's temporary folder)"),
		verify:       fs.Bool("verify", false, "check every workload's outcome in full (slower)"),
		quiet:        fs.Bool("quiet", false, "no progress lines or notes on stderr"),
		cpuProfile:   fs.String("cpuprofile", "", "write a CPU profile of the whole run (this process; see go tool pprof)"),
		postgres:     fs.String("postgres", "", "also run against relays on the PostgreSQL database at this `url` (its role needs CREATE)"),
		relayCounts:  fs.String("relays", "1", "with --postgres: the relay `counts` to run, comma-separated, such as 1,2,3"),
	}
	if err := parse(fs, args, c.Stdout, benchHelp); err != nil {
		return err
	}
	names := splitList(*f.workloads)
	for _, n := range names {
		if _, err := bench.Lookup(n); err != nil {
			return usagef(fs, "%v", err)
		}
	}
	notes := c.Stderr
	if *f.quiet {
		notes = io.Discard
	}
	if err := checkBenchFlags(fs, f, names, notes); err != nil {
		return err
	}
	target, pg, err := c.target(fs, f)
	if err != nil {
		return err
	}
	if *f.dir != "" {
		if err := os.MkdirAll(*f.dir, 0o700); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	if *f.cpuProfile != "" {
		prof, err := os.Create(*f.cpuProfile)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer prof.Close()
		if err := pprof.StartCPUProfile(prof); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	progress := func(s string) {
		if !*f.quiet {
			fmt.Fprintf(c.Stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), s)
		}
	}
	cfg := bench.Config{
		Records: *f.records, Updates: *f.updates, History: *f.history, MergeRecords: *f.mergeRecords,
		Clients: *f.clients, Subscribers: *f.subscribers, Batch: *f.batch, Objects: *f.objects, MaxGrowth: *f.maxGrowth,
		Relay: target, Dir: *f.dir, Progress: progress, Seed: *f.seed, Verify: *f.verify,
	}
	progress(fmt.Sprintf("bench: %s against a relay %s", strings.Join(names, ", "), target))
	if pg != nil {
		runs, err := pg.run(ctx, cfg, names)
		if werr := pg.write(c.Stdout, runs, *f.jsonOut, err); werr != nil && err == nil {
			err = werr
		}
		return err
	}
	results, err := bench.Run(ctx, cfg, names...)
	// What was measured before a failure or an interrupt is still shown.
	if werr := writeResults(c.Stdout, results, *f.jsonOut, err); werr != nil && err == nil {
		err = werr
	}
	return err
}

// benchSizes are bench's size flags, each with the workloads it sizes.
var benchSizes = []struct {
	name      string
	workloads []string
}{
	{"records", []string{"W0", "W1", "W4"}},
	{"updates", []string{"W2", "W3", "W4"}},
	{"history", []string{"W2L"}},
	{"merge-records", []string{"W3"}},
	{"clients", []string{"W4", "W5"}},
	{"subscribers", []string{"W4", "W5"}},
	{"batch", []string{"W4", "W5"}},
	{"objects", []string{"W7"}},
	{"max-growth", []string{"W5"}},
}

// checkBenchFlags refuses sizes that are not positive and flags of a mode
// not chosen, and says on stderr which size flags no workload named uses.
func checkBenchFlags(fs *flag.FlagSet, f benchFlags, names []string, stderr io.Writer) error {
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	for _, sz := range benchSizes {
		v := fs.Lookup(sz.name).Value.(flag.Getter).Get().(int)
		if v < 1 && !(sz.name == "max-growth" && v == 0) {
			return usagef(fs, "--%s %d: want a positive number", sz.name, v)
		}
		if !set[sz.name] {
			continue
		}
		used := false
		for _, n := range append(names, "W0") { // W0 always runs
			used = used || slices.ContainsFunc(sz.workloads, func(w string) bool { return strings.EqualFold(w, n) })
		}
		if !used {
			fmt.Fprintf(stderr, "ferry bench: --%s sizes %s, not run: ignored\n", sz.name, strings.Join(sz.workloads, " and "))
		}
	}
	if set["relays"] && *f.postgres == "" {
		return usagef(fs, "--relays counts relays on PostgreSQL: give --postgres too")
	}
	if (set["api-key"] || set["token"]) && *f.relayURL == "" {
		return usagef(fs, "--api-key and --token are for an external relay: give --relay too")
	}
	return nil
}

// benchFlags are the flags of ferry bench.
type benchFlags struct {
	workloads, relayURL, apiKey, token, dir, cpuProfile, postgres, relayCounts               *string
	records, updates, history, mergeRecords, clients, subscribers, batch, objects, maxGrowth *int
	child, jsonOut, verify, quiet                                                            *bool
	seed                                                                                     *uint64
}

// target says where the workloads run, from the flags: a relay in this
// process, a child process, an external relay, or (pg not nil) a child on
// its embedded store and then relays on PostgreSQL.
func (c *BenchCommand) target(fs *flag.FlagSet, f benchFlags) (bench.Target, *benchPostgres, error) {
	var pg *benchPostgres
	child := *f.child
	if *f.postgres != "" {
		if *f.relayURL != "" {
			return bench.Target{}, nil, usagef(fs, "--postgres and --relay exclude each other")
		}
		counts, err := parseRelayCounts(*f.relayCounts)
		if err != nil {
			return bench.Target{}, nil, usagef(fs, "%v", err)
		}
		pg = &benchPostgres{dsn: *f.postgres, relays: counts}
		child = true // the baseline runs as a process too, as the PostgreSQL relays do
	}
	target := bench.Target{Mode: bench.InProcess}
	switch {
	case child && *f.relayURL != "":
		return target, nil, usagef(fs, "--child and --relay exclude each other")
	case child:
		target = bench.Target{Mode: bench.Child, Command: c.relayCommand}
		if target.Command == nil {
			exe, err := os.Executable()
			if err != nil {
				return target, nil, fmt.Errorf("bench: finding this executable for --child: %w", err)
			}
			target.Command = func(ctx context.Context, args []string) *exec.Cmd { return relaySubcommand(ctx, exe, args) }
		}
	case *f.relayURL != "":
		if *f.apiKey == "" || *f.token == "" {
			return target, nil, usagef(fs, "--relay needs --api-key and --token")
		}
		target = bench.Target{Mode: bench.External, URL: *f.relayURL, APIKey: *f.apiKey, Token: *f.token}
	}
	if pg != nil {
		pg.child = target
	}
	return target, pg, nil
}

// writeResults prints results as a table, or as JSON with runErr's text.
func writeResults(w io.Writer, results []*bench.Result, jsonOut bool, runErr error) error {
	if !jsonOut {
		return bench.WriteTable(w, results)
	}
	out := benchOutput{Results: results}
	if runErr != nil {
		out.Error = runErr.Error()
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// relaySubcommand runs `exe relay args...`, stopped with SIGTERM (a clean
// shutdown) if ctx ends.
func relaySubcommand(ctx context.Context, exe string, args []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, exe, append([]string{"relay"}, args...)...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	return cmd
}
