package relay

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// Tests of the quota internals, with no relay around them; the quotas'
// behaviour as devices see it is tested in quota_test.go.

// zeroUsage is a Store of which quotas read only Usage: nothing stored.
type zeroUsage struct{ Store }

func (zeroUsage) Usage(context.Context, string) (Usage, error) { return Usage{}, nil }

// quotaPush is a push of one new record, as a device makes it.
func quotaPush(t testing.TB) *transport.Push {
	d, err := crdt.New("")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Put(map[string]any{"n": 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Commit("", time.Time{}); err != nil {
		t.Fatal(err)
	}
	data, err := d.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &transport.Push{Collection: "c", Records: []transport.RecordChanges{{Record: "r1", Data: data}}}
}

func TestQuotaBucket(t *testing.T) {
	auth, _ := NewAuth([]App{NewApp("a"), NewApp("slow")}, nil)
	qs, err := newQuotas(&Options{Store: zeroUsage{}, Auth: auth, Quotas: map[string]Quota{
		"a": {PushesPerSecond: 3}, "slow": {PushesPerSecond: 1e-15},
	}})
	if err != nil {
		t.Fatal(err)
	}
	aq := qs.apps["a"]
	const third = time.Second / 3
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 3 { // the default burst: the rate, rounded up
		if w := aq.take(t0); w != 0 {
			t.Fatalf("take %d of the burst waits %v", i, w)
		}
	}
	if w := aq.take(t0); w != third {
		t.Fatalf("empty bucket: wait %v, want %v", w, third)
	}
	// A clock that steps back refills nothing.
	if w := aq.take(t0.Add(-time.Hour)); w != time.Hour+third {
		t.Fatalf("a clock stepping back: wait %v", w)
	}
	if w := aq.take(t0.Add(third - 1)); w != 1 {
		t.Fatalf("a nanosecond early: wait %v, want 1ns", w)
	}
	if w := aq.take(t0.Add(third)); w != 0 {
		t.Fatalf("after a third of a second: wait %v", w)
	}
	for _, tc := range []struct {
		wait time.Duration
		ms   uint32
	}{{1, 1}, {time.Millisecond, 1}, {time.Millisecond + 1, 2}, {250 * time.Millisecond, 250}, {time.Duration(math.MaxInt64), math.MaxUint32}} {
		if got := retryMS(tc.wait); got != tc.ms {
			t.Errorf("retryMS(%v) = %d, want %d", tc.wait, got, tc.ms)
		}
	}
	// A push every 30 million years still gives a wait retry_ms carries.
	slow := qs.apps["slow"]
	slow.take(t0)
	if w := slow.take(t0); w <= 0 || retryMS(w) != math.MaxUint32 {
		t.Fatalf("very slow rate: wait %v, retry_ms %d", w, retryMS(w))
	}
}

// BenchmarkQuotaAdmitPush is the cost a quota adds to each push, on every
// core at once for one app (all its sessions share its lock): a token
// from the bucket and a stored-bytes check against the cached count; and
// the cost of a refusal (its message and metric).
func BenchmarkQuotaAdmitPush(b *testing.B) {
	for _, tc := range []struct {
		name string
		rate float64
	}{{"admitted", 1e12}, {"refused", 1e-3}} {
		b.Run(tc.name, func(b *testing.B) {
			auth, _ := NewAuth([]App{NewApp("shop")}, nil)
			t0 := time.Now()
			qs, err := newQuotas(&Options{Store: zeroUsage{}, Auth: auth, Now: func() time.Time { return t0 }, Quotas: map[string]Quota{
				"shop": {PushesPerSecond: tc.rate, PushBurst: 1, MaxStoredBytes: 1 << 62},
			}})
			if err != nil {
				b.Fatal(err)
			}
			qs.count(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refusals"}, []string{"app", "quota"}))
			if tc.rate > 1 {
				// A clock that never moves, and a bucket that never runs dry.
				qs.apps["shop"].tau = time.Duration(math.MaxInt64)
			}
			p := quotaPush(b)
			ctx := context.Background()
			if tc.rate < 1 {
				qs.apps["shop"].take(t0) // the burst
			}
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					done, err := qs.admitPush(ctx, "shop", p)
					if (err == nil) != (tc.rate > 1) {
						b.Errorf("admitPush: %v", err)
						return
					}
					if err == nil {
						done(true)
					}
				}
			})
		})
	}
}
