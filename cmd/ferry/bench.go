package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/ferrysync/ferry/bench"
)

// BenchCommand runs the benchmark workloads of package bench (W0 to W5,
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
and prints each figure with its ratio to the floor, W0, measured in the
same run. Progress goes to standard error.

With --postgres, the workloads run against a relay process on its embedded
store, then against --relays relay processes sharing the PostgreSQL
database (each workload in a schema of its own, dropped after), and a last
table compares each PostgreSQL figure with the embedded store's.
`

func (c *BenchCommand) Run(ctx context.Context, args []string) error {
	fs := newFlags("bench")
	workloads := fs.String("workloads", strings.Join(bench.Default, ","), "workloads to run, comma-separated (W0 to W5, and W2L: W2 over --history updates; W2L and W5 take minutes)")
	records := fs.Int("records", 10_000, "records of W0, W1 and W4")
	updates := fs.Int("updates", 1_000, "W2 live updates, and W3 offline edits per replica")
	history := fs.Int("history", 10_000, "W2L live updates, all to one record")
	mergeRecords := fs.Int("merge-records", 100, "records W3's replicas both edit")
	clients := fs.Int("clients", 16, "W4 concurrent pushing clients")
	subscribers := fs.Int("subscribers", 8, "W4 live subscribers")
	batch := fs.Int("batch", 1, "W4 records per push")
	maxGrowth := fs.Int("max-growth", 0, "W5 skips sizes above this (10000 for a quicker run); 0: 1,000, 10,000 and 100,000")
	relayURL := fs.String("relay", "", "an external relay's `URL`, ws://host:port/ws (with --api-key and --token); default: one in this process")
	apiKey := fs.String("api-key", "", "the external relay's app API key")
	token := fs.String("token", "", "a token of that app that may write every collection")
	child := fs.Bool("child", false, "run the relay as a child process (ferry relay), to measure its memory apart")
	jsonOut := fs.Bool("json", false, "print JSON instead of a table")
	seed := fs.Uint64("seed", 0, "seed for record contents and edits (0: random)")
	dir := fs.String("dir", "", "`folder` for the replicas' and relay's data, created if missing (default: the system's temporary folder)")
	verify := fs.Bool("verify", false, "check every workload's outcome in full (slower)")
	quiet := fs.Bool("quiet", false, "no progress lines on stderr")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (this process; see go tool pprof)")
	postgres := fs.String("postgres", "", "also run against relays on the PostgreSQL database at this `url` (its role needs CREATE)")
	relayCounts := fs.String("relays", "1", "with --postgres: the relay `counts` to run, comma-separated, such as 1,2,3")
	if err := parse(fs, args, c.Stdout, benchHelp); err != nil {
		return err
	}
	names := splitList(*workloads)
	for _, n := range names {
		if _, err := bench.Lookup(n); err != nil {
			return usagef(fs, "%v", err)
		}
	}
	target := bench.Target{Mode: bench.InProcess}
	var pg *benchPostgres
	if *postgres != "" {
		if *relayURL != "" {
			return usagef(fs, "--postgres and --relay exclude each other")
		}
		counts, err := parseRelayCounts(*relayCounts)
		if err != nil {
			return usagef(fs, "%v", err)
		}
		pg = &benchPostgres{dsn: *postgres, relays: counts}
		*child = true // the baseline runs as a process too, as the PostgreSQL relays do
	}
	switch {
	case *child && *relayURL != "":
		return usagef(fs, "--child and --relay exclude each other")
	case *child:
		target = bench.Target{Mode: bench.Child, Command: c.relayCommand}
		if target.Command == nil {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("bench: finding this executable for --child: %w", err)
			}
			target.Command = func(ctx context.Context, args []string) *exec.Cmd { return relaySubcommand(ctx, exe, args) }
		}
	case *relayURL != "":
		if *apiKey == "" || *token == "" {
			return usagef(fs, "--relay needs --api-key and --token")
		}
		target = bench.Target{Mode: bench.External, URL: *relayURL, APIKey: *apiKey, Token: *token}
	}
	if *dir != "" {
		if err := os.MkdirAll(*dir, 0o700); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	progress := func(s string) {
		if !*quiet {
			fmt.Fprintf(c.Stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), s)
		}
	}
	cfg := bench.Config{
		Records: *records, Updates: *updates, History: *history, MergeRecords: *mergeRecords,
		Clients: *clients, Subscribers: *subscribers, Batch: *batch, MaxGrowth: *maxGrowth,
		Relay: target, Dir: *dir, Progress: progress, Seed: *seed, Verify: *verify,
	}
	progress(fmt.Sprintf("bench: %s against a relay %s", strings.Join(names, ", "), target))
	if pg != nil {
		pg.child = target
		runs, err := pg.run(ctx, cfg, names)
		if werr := pg.write(c.Stdout, runs, *jsonOut, err); werr != nil && err == nil {
			err = werr
		}
		return err
	}
	results, err := bench.Run(ctx, cfg, names...)
	// What was measured before a failure or an interrupt is still shown.
	if *jsonOut {
		out := benchOutput{Results: results}
		if err != nil {
			out.Error = err.Error()
		}
		enc := json.NewEncoder(c.Stdout)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(out); jerr != nil && err == nil {
			err = jerr
		}
		return err
	}
	if terr := bench.WriteTable(c.Stdout, results); terr != nil && err == nil {
		err = terr
	}
	return err
}

// relaySubcommand runs `exe relay args...`, stopped with SIGTERM (a clean
// shutdown) if ctx ends.
func relaySubcommand(ctx context.Context, exe string, args []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, exe, append([]string{"relay"}, args...)...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	return cmd
}
