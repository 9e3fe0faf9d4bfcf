package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// TestMapsProbe: with FERRY_BENCH_SMAPS set, a phase's line names its
// RSS and the mappings that make it up, the executable's among them.
func TestMapsProbe(t *testing.T) {
	if _, err := os.Stat("/proc/self/smaps"); err != nil {
		t.Skip("no /proc/self/smaps:", err)
	}
	out := filepath.Join(t.TempDir(), "maps.txt")
	t.Setenv(mapsEnv, out)
	// In a bubble, the probe's sampling timer is the bubble's clock: a
	// sleep lets it take a sample at once.
	store := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		p := newMapsProbe(store)
		defer p.close()
		time.Sleep(time.Second) // a hundred samples
		p.mu.Lock()
		sampled := p.desc != ""
		p.mu.Unlock()
		if !sampled {
			t.Fatal("no sample")
		}
		p.flush("phase one")
	})
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if !strings.HasPrefix(lines[0], "phase one: rss ") ||
		!strings.Contains(lines[0], "anonymous ") || !strings.Contains(lines[0], " go objects ") || !strings.Contains(lines[0], "executable ") {
		t.Fatalf("wrote %q", b)
	}
}
