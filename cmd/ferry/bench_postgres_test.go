package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/internal/pgtest"
)

// childRelay runs this test binary as `ferry relay` (see TestMain).
func childRelay(ctx context.Context, args []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FERRY_TEST_MAIN="+strings.Join(append([]string{"relay"}, args...), "\t"))
	return cmd
}

// --postgres runs the workloads against a Badger relay process, then
// against one and two relay processes on PostgreSQL, each checked in full
// (--verify), and compares them.
func TestBenchPostgres(t *testing.T) {
	dsn := pgtest.DSN(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	run := func(extra ...string) (string, string) {
		t.Helper()
		var out, errb bytes.Buffer
		c := &BenchCommand{Stdout: &out, Stderr: &errb, relayCommand: childRelay}
		args := append([]string{"--postgres", dsn, "--relays", "1,2", "--workloads", "W1,W2,W4"}, tinyBench(t)...)
		if err := c.Run(ctx, append(args, extra...)); err != nil {
			t.Fatalf("bench: %v\nstderr:\n%s", err, errb.String())
		}
		return out.String(), errb.String()
	}
	out, _ := run("--json")
	var got benchOutput
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("JSON: %v\n%s", err, out)
	}
	var seen []string
	for _, r := range got.Results {
		seen = append(seen, r.Relay+" "+r.Workload)
		if r.Workload == "W4" {
			if m, ok := r.Metric("accepted"); !ok || m.Value != 30 {
				t.Errorf("%s W4 accepted = %+v, want 30", r.Relay, m)
			}
		}
		if r.Workload == "W1" && strings.HasPrefix(r.Relay, "postgres") {
			m, ok := r.Metric("relay_peak_rss")
			if !ok || m.Value <= 0 || !strings.Contains(m.Note, "PostgreSQL sessions") {
				t.Errorf("%s W1 relay_peak_rss = %+v", r.Relay, m)
			}
		}
	}
	want := " W0,child W1,child W2,child W4,postgres x1 W1,postgres x1 W2,postgres x1 W4,postgres x2 W1,postgres x2 W2,postgres x2 W4"
	if strings.Join(seen, ",") != want {
		t.Fatalf("results %v,\nwant %s", seen, want)
	}

	table, progress := run()
	for _, s := range []string{"PostgreSQL against the Badger relay", "postgres x2", "ingest_rate", "latency_p99", "fanout_p50", "relay: postgres x1"} {
		if !strings.Contains(table, s) {
			t.Errorf("table lacks %q:\n%s", s, table)
		}
	}
	if !strings.Contains(progress, "W4 on postgres x2: starting") {
		t.Errorf("progress lacks the PostgreSQL runs:\n%s", progress)
	}
}

func TestBenchPostgresFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--postgres", "dbname=x", "--relays", "0"},
		{"--postgres", "dbname=x", "--relays", "two"},
		{"--postgres", "dbname=x", "--relay", "ws://127.0.0.1:1/ws", "--api-key", "k", "--token", "t"},
	} {
		var out, errb bytes.Buffer
		if code := runMain(context.Background(), append([]string{"bench"}, args...), &out, &errb); code != exitUsage {
			t.Errorf("bench %v: exit %d, want %d; stderr %s", args, code, exitUsage, errb.String())
		}
	}
}
