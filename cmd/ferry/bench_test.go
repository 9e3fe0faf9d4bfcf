package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	for _, want := range []string{"floor (W0, same run): 30 changes", "workload", "ratio to W0", "fresh_pull", "latency_p99", "conflicts", "fanout_p50", "relay: in-process"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	for _, w := range []string{"W5", "W2L"} {
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

// TestBenchChild runs W1 against a relay in a child process: this test
// binary, re-run as `ferry relay` (see TestMain).
func TestBenchChild(t *testing.T) {
	var out, errb bytes.Buffer
	c := &BenchCommand{Stdout: &out, Stderr: &errb, relayCommand: func(ctx context.Context, args []string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "FERRY_TEST_MAIN="+strings.Join(append([]string{"relay"}, args...), "\t"))
		return cmd
	}}
	args := append([]string{"--child", "--json", "--workloads", "W1"}, tinyBench(t)...)
	if err := c.Run(context.Background(), args); err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, errb.String())
	}
	var got benchOutput
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	r := got.Results[len(got.Results)-1]
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

func TestBenchFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--workloads", "W9"},
		{"--relay", "ws://127.0.0.1:1/ws"},
		{"--relay", "ws://127.0.0.1:1/ws", "--api-key", "k", "--token", "t", "--child"},
		{"extra"},
	} {
		var out, errb bytes.Buffer
		if err := run(context.Background(), append([]string{"bench"}, args...), &out, &errb); err == nil {
			t.Errorf("bench %v: no error", args)
		}
	}
}
