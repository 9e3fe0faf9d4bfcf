package bench

import (
	"context"
	"testing"
	"time"
)

// W6 at a small size: its checks (the scan and the index find the same
// rows as the inserts made) pass, and its metrics are sane.
func TestW6Small(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := W6(ctx, Config{Records: 300, Dir: t.TempDir(), Seed: seed(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"insert", "open", "scan", "index_build", "indexed_query", "live_latency_p50", "get_cold", "get_warm", "insert_peak_rss", "insert_peak_rss_anon", "insert_peak_rss_file"} {
		m, ok := res.Metric(name)
		if !ok || m.Value <= 0 {
			t.Errorf("metric %s = %+v", name, m)
		}
	}
	if m, _ := res.Metric("records"); m.Value != 3000 {
		t.Errorf("records = %v, want 3000", m.Value)
	}
}
