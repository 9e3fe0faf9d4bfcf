package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/replica"
)

// W6 at a small size: its device runs in a process of its own, whose
// figures they are; its checks (the scan and the index find the same
// rows as the inserts made; with Verify, the store it leaves holds them
// all) pass, and its metrics are sane.
func TestW6Small(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := W6(ctx, Config{Records: 300, Dir: t.TempDir(), Seed: seed(t), Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"insert", "open", "scan", "index_build", "indexed_query", "live_latency_p50", "get_cold", "get_warm",
		"insert_peak_rss", "insert_peak_rss_anon", "insert_peak_rss_file", "after_insert_rss", "rss_end", "device_peak_rss"} {
		m, ok := res.Metric(name)
		if !ok || m.Value <= 0 {
			t.Errorf("metric %s = %+v", name, m)
		}
	}
	if m, _ := res.Metric("records"); m.Value != 3000 {
		t.Errorf("records = %v, want 3000", m.Value)
	}
	if res.DevicePID == 0 || res.DevicePID == os.Getpid() {
		t.Errorf("device PID = %d, the test's %d: want another process", res.DevicePID, os.Getpid())
	}
	if m, _ := res.Metric("insert_peak_rss"); !strings.Contains(m.Note, "device's own process") {
		t.Errorf("insert_peak_rss note = %q", m.Note)
	}
	peak, _ := res.Metric("insert_peak_rss")
	whole, _ := res.Metric("device_peak_rss")
	if whole.Value < peak.Value {
		t.Errorf("device_peak_rss %v < insert_peak_rss %v", whole.Value, peak.Value)
	}
}

// The device process's report: its own PID, and its own memory, so that
// the figures W6 gives are not the bench process's.
func TestW6DeviceReportsItsOwnProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A large allocation in this process, kept alive: a figure taken here
	// would include it; the device's must not.
	ballast := make([]byte, 256<<20)
	for i := range ballast {
		if i%4096 == 0 {
			ballast[i] = 1
		}
	}
	self, err := procStatus("self")
	if err != nil {
		t.Fatal(err)
	}
	spec := deviceSpec{Records: 1000, Seed: seed(t), Dir: filepath.Join(t.TempDir(), "W6")}
	out, err := runDevice(ctx, spec, func(string) {})
	if err != nil {
		t.Fatal(err)
	}
	if out.PID == os.Getpid() {
		t.Fatalf("device PID %d is the test's", out.PID)
	}
	peak, _ := metricIn(out.Metrics, "insert_peak_rss")
	if peak.Value <= 0 || peak.Value >= float64(self.VmRSS) {
		t.Errorf("device's insert_peak_rss %v B; this process holds %d B with its ballast: the figure is not the device's own", peak.Value, self.VmRSS)
	}
	ballast[0]++
	// Its store is on disk where the spec said, with every record, opened
	// as W6 documents it (local-only, Relaxed).
	if err := w6VerifyStore(spec); err != nil {
		t.Error(err)
	}
	r, err := replica.Open(spec.Dir, w6Options())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	n := 0
	for _, err := range replica.Select(r.Collection("items"), replica.Query[Item]{}) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != spec.Records {
		t.Errorf("store holds %d records, want %d", n, spec.Records)
	}
}
