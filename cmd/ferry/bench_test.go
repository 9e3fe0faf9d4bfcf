package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/bench"
)

// tinyBench are flags that make every workload take well under a second.
// The --dir does not exist yet: bench creates it.
func tinyBench(t *testing.T) []string {
	return []string{"--records", "30", "--updates", "5", "--merge-records", "5", "--clients", "3", "--subscribers", "2",
		"--dir", filepath.Join(t.TempDir(), "new", "bench"), "--verify", "--seed", "42"}
}

func TestBenchTable(t *testing.T) {
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, append([]string{"bench"}, tinyBench(t)...), &out, &errb); err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, errb.String())
	}
	for _, want := range []string{"floor (W0, same run): 30 creation changes", "median of 5 runs", "relay: in-process",
		"workload  ", "metric", "ratio", "target", "met?",
		"W1 bulk, 30 records", "fresh pull by a new replica", "ratio ≥ 0.5",
		"W2 live, 5 updates", "latency p50 / p99 / max", "p50 ≤ 1 ms",
		"W3 merge, 2 × 5 edits on 5 records", "syncs / conflicts resolved",
		"W4 ingest, 3 clients, 2 subscribers", "fan-out, send to last subscriber"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	for _, w := range []string{"\nW5 ", "\nW2L ", "\nW5:", "\nW2L:"} {
		if strings.Contains(out.String(), w) {
			t.Errorf("%s ran by default:\n%s", w, out.String())
		}
	}
	if !strings.Contains(errb.String(), "W4: starting") {
		t.Errorf("no progress on stderr:\n%s", errb.String())
	}
}

func TestBenchJSON(t *testing.T) {
	var out, errb bytes.Buffer
	args := append([]string{"bench", "--json", "--quiet", "--workloads", "W1,W4"}, tinyBench(t)...)
	if err := run(context.Background(), args, &out, &errb); err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, errb.String())
	}
	if errb.Len() > 0 {
		t.Errorf("--quiet printed %q", errb.String())
	}
	var got benchOutput
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("JSON: %v\n%s", err, out.String())
	}
	var names []string
	for _, r := range got.Results {
		names = append(names, r.Workload)
		if r.Floor.Changes != 30 || r.Floor.Rate <= 0 {
			t.Errorf("%s: floor %+v", r.Workload, r.Floor)
		}
	}
	if strings.Join(names, ",") != "W0,W1,W4" {
		t.Fatalf("workloads %v, want W0, W1, W4", names)
	}
	if m, ok := got.Results[2].Metric("accepted"); !ok || m.Value != 30 {
		t.Errorf("W4 accepted = %+v, want 30", m)
	}
	if m, ok := got.Results[1].Metric("push"); !ok || m.Ratio <= 0 || m.Unit != "s" {
		t.Errorf("W1 push = %+v", m)
	}
}

// childBench runs ferry bench --child --json with args and the tiny
// sizes, the relay being this test binary re-run as `ferry relay` (see
// TestMain), and returns its results.
func childBench(t *testing.T, args ...string) []*bench.Result {
	t.Helper()
	var out, errb bytes.Buffer
	c := &BenchCommand{Stdout: &out, Stderr: &errb, relayCommand: func(ctx context.Context, args []string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "FERRY_TEST_MAIN="+strings.Join(append([]string{"relay"}, args...), "\t"))
		return cmd
	}}
	args = append(append([]string{"--child", "--json"}, args...), tinyBench(t)...)
	if err := c.Run(context.Background(), args); err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, errb.String())
	}
	var got benchOutput
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	return got.Results
}

// directNote is the note of a workload whose devices reached a child
// relay without the byte-counting proxy.
const directNote = "connected to the child relay directly"

func hasNote(r *bench.Result, s string) bool {
	return slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, s) })
}

// TestBenchChild runs W1 against a relay in a child process. Its devices
// go through the proxy, which counts the bytes they move.
func TestBenchChild(t *testing.T) {
	results := childBench(t, "--workloads", "W1")
	r := results[len(results)-1]
	if r.Relay != "child" {
		t.Errorf("relay = %q, want child", r.Relay)
	}
	m, ok := r.Metric("relay_peak_rss")
	if !ok || m.Value <= 0 || !strings.Contains(m.Note, "child relay process") {
		t.Errorf("relay_peak_rss = %+v", m)
	}
	if m, ok := r.Metric("push_wire"); !ok || m.Value <= 0 {
		t.Errorf("push_wire = %+v", m)
	}
	if hasNote(r, directNote) {
		t.Errorf("W1's devices bypassed the proxy that counts push_wire: notes %q", r.Notes)
	}
}

// TestBenchChildDevicesDirect: against a child relay, the devices of the
// workloads that report no bytes (W2, W3) connect to the relay itself,
// not through the bench's proxy, whose extra hop each way would be part
// of W2's latency, and the workloads still run to their checked end.
func TestBenchChildDevicesDirect(t *testing.T) {
	results := childBench(t, "--workloads", "W2,W3")
	for _, want := range []struct{ workload, metric string }{{"W2", "latency_p50"}, {"W3", "merge"}} {
		i := slices.IndexFunc(results, func(r *bench.Result) bool { return r.Workload == want.workload })
		if i < 0 {
			t.Fatalf("no %s result", want.workload)
		}
		r := results[i]
		if m, ok := r.Metric(want.metric); !ok || m.Value <= 0 {
			t.Errorf("%s %s = %+v", want.workload, want.metric, m)
		}
		if !hasNote(r, directNote) {
			t.Errorf("%s's devices went through the proxy: notes %q", want.workload, r.Notes)
		}
	}
}

// TestBenchChildW4CountsAtClients: against a child relay, W4's clients
// connect to the relay itself, not through the bench's byte-counting
// proxy (which would take CPU on the relay's cores), and count the bytes
// on their own connections: the ingest's wire bytes are still measured.
func TestBenchChildW4CountsAtClients(t *testing.T) {
	results := childBench(t, "--workloads", "W4")
	r := results[len(results)-1]
	m, ok := r.Metric("ingest_wire")
	if !ok || !strings.Contains(m.Note, "clients' own connections") {
		t.Fatalf("ingest_wire = %+v, want bytes counted on the clients' connections", m)
	}
	// Each change crosses at least once in a push and once per
	// subscriber, and the wire holds at least its payload each time.
	p, _ := r.Metric("ingest_payload")
	subs, _ := r.Metric("subscribers")
	if p.Value <= 0 || m.Value < p.Value*(1+subs.Value) {
		t.Errorf("ingest_wire %v bytes for %v bytes of changes pushed to %v subscribers", m.Value, p.Value, subs.Value)
	}
}

// TestBenchHistory runs W2L, W2 over a long history, sized by --history.
func TestBenchHistory(t *testing.T) {
	var out, errb bytes.Buffer
	args := append([]string{"bench", "--json", "--quiet", "--workloads", "W2L", "--history", "20"}, tinyBench(t)...)
	if err := run(context.Background(), args, &out, &errb); err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, errb.String())
	}
	var got benchOutput
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("JSON: %v\n%s", err, out.String())
	}
	if len(got.Results) != 2 || got.Results[1].Workload != "W2L" {
		t.Fatalf("results %+v, want W0 and W2L", got.Results)
	}
	r := got.Results[1]
	if m, ok := r.Metric("updates"); !ok || m.Value != 20 {
		t.Errorf("W2L updates = %+v, want 20 (--history)", m)
	}
	if m, ok := r.Metric("latency_p50_growth"); !ok || m.Value <= 0 || m.Unit != "x" {
		t.Errorf("W2L latency_p50_growth = %+v", m)
	}
}

// TestBenchFlags: a command line bench cannot honour is a usage error
// (exit 2) that names the flag, before anything runs.
func TestBenchFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"--workloads", "W9"}, "W9"},
		{[]string{"--relay", "ws://127.0.0.1:1/ws"}, "--api-key"},
		{[]string{"--relay", "ws://127.0.0.1:1/ws", "--api-key", "k", "--token", "t", "--child"}, "--child"},
		{[]string{"extra"}, "extra"},
		{[]string{"--records", "-5"}, "--records -5"},
		{[]string{"--records", "0"}, "--records 0"},
		{[]string{"--updates", "0"}, "--updates 0"},
		{[]string{"--history", "-1"}, "--history -1"},
		{[]string{"--merge-records", "0"}, "--merge-records 0"},
		{[]string{"--clients", "0"}, "--clients 0"},
		{[]string{"--subscribers", "-2"}, "--subscribers -2"},
		{[]string{"--batch", "0"}, "--batch 0"},
		{[]string{"--max-growth", "-1"}, "--max-growth -1"},
		{[]string{"--relays", "2"}, "--postgres"},
		{[]string{"--token", "t"}, "--relay"},
	} {
		var out, errb bytes.Buffer
		if code := runMain(context.Background(), append([]string{"bench"}, c.args...), &out, &errb); code != exitUsage || !strings.Contains(errb.String(), c.says) {
			t.Errorf("bench %v: exit %d, stderr %q; want %d, naming %q", c.args, code, errb.String(), exitUsage, c.says)
		}
		if out.Len() > 0 {
			t.Errorf("bench %v printed %q", c.args, out.String())
		}
	}
}

// TestBenchIgnoredSizes: a size flag for a workload not run is named on
// stderr as ignored; the run goes on.
func TestBenchIgnoredSizes(t *testing.T) {
	var out, errb bytes.Buffer
	args := append([]string{"bench", "--workloads", "W0", "--history", "20", "--merge-records", "3"}, tinyBench(t)...)
	if err := run(context.Background(), args, &out, &errb); err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, errb.String())
	}
	for _, want := range []string{"--history sizes W2L, not run: ignored", "--merge-records sizes W3, not run: ignored", "--clients sizes W4 and W5, not run: ignored"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb.String())
		}
	}
	if strings.Contains(errb.String(), "--records") {
		t.Errorf("--records called ignored, but W0 always runs:\n%s", errb.String())
	}
}
