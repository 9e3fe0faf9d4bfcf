package replica

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/relaytest"
	"github.com/ferrysync/ferry/transport"
)

// quotaRelay runs a relay whose app may push once per second, one record
// per push, on the in-memory network of a synctest bubble.
func quotaRelay(t *testing.T, q relay.Quota) *relaytest.Relay {
	return relaytest.Start(t, &relaytest.Options{Pipe: true, Relay: relay.Options{
		Limits: transport.Limits{MaxBatch: 1},
		Quotas: map[string]relay.Quota{"test": q},
	}})
}

// relayMetric reads one line's value from the relay's /metrics.
func relayMetric(t *testing.T, rl *relaytest.Relay, series string) string {
	t.Helper()
	resp, err := rl.HTTPClient.Get("http://relay.test/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// A relay that rate-limits the app's pushes answers rate_limited with
// retry_ms: the sync waits that long and pushes again, and succeeds.
func TestSyncWaitsOutTheRelaysPushRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rl := quotaRelay(t, relay.Quota{PushesPerSecond: 1})
		a := pipeDevice(t, rl, Options{}, "")
		ca := coll2(t, a, "c")
		for _, id := range []string{"x", "y", "z"} {
			if err := ca.Create(id, map[string]any{"id": id}); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		mustSync(t, a, "p") // three pushes of one record: two are refused at first
		if took := time.Since(start); took < 2*time.Second {
			t.Fatalf("the sync took %v of fake time; two waits of 1 s were asked for", took)
		}
		if n, _ := ca.PendingCount(); n != 0 {
			t.Fatalf("%d records pending after the sync", n)
		}
		if got := relayMetric(t, rl, `ferry_relay_quota_refusals_total{app="test",quota="push_rate"}`); got != "2" {
			t.Fatalf("push_rate refusals = %q, want 2", got)
		}
	})
}

// A wait longer than the replica will sit through fails the sync with
// rate_limited at once; what was pushed stays pushed, the rest pending.
func TestSyncGivesUpOnALongRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rl := quotaRelay(t, relay.Quota{PushesPerSecond: 0.01}) // one push every 100 s
		a := pipeDevice(t, rl, Options{}, "")
		ca := coll2(t, a, "c")
		for _, id := range []string{"x", "y"} {
			if err := ca.Create(id, map[string]any{"id": id}); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		_, err := a.Sync(t.Context(), "p")
		if !errors.Is(err, transport.ErrRateLimited) {
			t.Fatalf("sync: %v, want rate_limited", err)
		}
		if took := time.Since(start); took >= maxRateLimitWait {
			t.Fatalf("the sync waited %v for a 100 s limit", took)
		}
		if n, _ := ca.PendingCount(); n != 1 {
			t.Fatalf("%d records pending, want 1 (the first push went through)", n)
		}
	})
}
