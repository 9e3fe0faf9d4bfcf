package bench_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPeersHarness runs the peers' harness (bench/peers, Node) at a tiny
// size: Ferry's W0 to W3 through a ferry binary built here, then Yjs with
// y-websocket and automerge-repo with its sync server, and checks that
// every figure of the side-by-side table was measured. Without Node or
// npm, or when the pinned packages cannot be installed, it is skipped,
// unless FERRY_REQUIRE_JS=1.
func TestPeersHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("builds ferry and runs three sync engines")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		skipJS(t, "node is not installed")
	}
	dir, err := filepath.Abs("peers")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "yjs", "package.json")); err != nil {
		if _, err := exec.LookPath("npm"); err != nil {
			skipJS(t, "npm is not installed")
		}
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("npm ci's output:\n%s", out)
			skipJS(t, "the pinned packages could not be installed (is the npm registry reachable?): "+err.Error())
		}
	}
	ferry := filepath.Join(t.TempDir(), "ferry")
	if out, err := exec.Command("go", "build", "-o", ferry, "../cmd/ferry").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "peers.mjs", "--json", "--ferry", ferry,
		"--records", "50", "--am-records", "20", "--updates", "10", "--merge-records", "5")
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	t.Logf("progress:\n%s", stderr.String())
	if err != nil {
		t.Fatalf("node peers.mjs: %v\n%s", err, out)
	}
	var res struct {
		Ferry map[string]map[string]any `json:"ferry"`
		Yjs   map[string]map[string]any `json:"yjs"`
		AM    map[string]map[string]any `json:"am"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("output is not the harness's JSON: %v\n%s", err, out)
	}
	peers := map[string]map[string]map[string]any{"ferry": res.Ferry, "yjs": res.Yjs, "automerge-repo": res.AM}
	defer checkW3Rounds(t, ctx, node, dir, ferry)
	want := map[string][]string{"w1": {"upload", "read"}, "w2": {"p50", "p99"}, "w3": {"merge"}}
	for peer, ws := range peers {
		for w, names := range want {
			for _, name := range names {
				if v, ok := ws[w][name].(float64); !ok || v <= 0 {
					t.Errorf("%s %s %s = %v, want a time", peer, w, name, ws[w][name])
				}
			}
		}
	}
}

// checkW3Rounds runs the harness's W3 in turns (--w3-rounds) at a tiny
// size and checks that each round measured both engines.
func checkW3Rounds(t *testing.T, ctx context.Context, node, dir, ferry string) {
	cmd := exec.CommandContext(ctx, node, "peers.mjs", "--json", "--ferry", ferry,
		"--w3-rounds", "2", "--updates", "10", "--merge-records", "5")
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node peers.mjs --w3-rounds: %v\n%s\n%s", err, out, stderr.String())
	}
	var res struct {
		Rounds struct {
			Ferry       []float64 `json:"ferry"`
			Yjs         []float64 `json:"yjs"`
			FerryMedian float64   `json:"ferry_median"`
			YjsMedian   float64   `json:"yjs_median"`
		} `json:"w3_rounds"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("--w3-rounds output is not the harness's JSON: %v\n%s", err, out)
	}
	r := res.Rounds
	if len(r.Ferry) != 2 || len(r.Yjs) != 2 || r.FerryMedian <= 0 || r.YjsMedian <= 0 {
		t.Fatalf("--w3-rounds 2 measured %+v", r)
	}
	for i := range r.Ferry {
		if r.Ferry[i] <= 0 || r.Yjs[i] <= 0 {
			t.Fatalf("--w3-rounds round %d: %+v", i+1, r)
		}
	}
}

// skipJS skips the test with why, or fails it under FERRY_REQUIRE_JS=1,
// which CI sets so that nothing is skipped there.
func skipJS(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("FERRY_REQUIRE_JS") == "1" {
		t.Fatal("FERRY_REQUIRE_JS=1 but " + why)
	}
	t.Skip(why + " (set FERRY_REQUIRE_JS=1 to fail instead)")
}
