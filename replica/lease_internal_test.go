package replica

import (
	"testing"
	"time"

	"github.com/ferrysync/ferry/transport"
)

// A lease's expires_ms is on the relay's lease clock (on PostgreSQL, the
// database's), which may be far from the device's: renewals are timed from
// ttl_ms whatever expires_ms says, and from expires_ms by the device's
// clock only for a relay that sends no ttl_ms, never beyond what was asked.
func TestLeaseGrantedIgnoresTheRelaysClock(t *testing.T) {
	asked := 30 * time.Second
	now := time.Now()
	for _, tc := range []struct {
		name string
		l    transport.Lease
		want time.Duration
	}{
		{"relay clock 90 min ahead", transport.Lease{ExpiresMS: now.Add(90*time.Minute + 20*time.Second).UnixMilli(), TTLMS: 20_000}, 20 * time.Second},
		{"relay clock 90 min behind", transport.Lease{ExpiresMS: now.Add(-90*time.Minute + 20*time.Second).UnixMilli(), TTLMS: 20_000}, 20 * time.Second},
		{"no ttl_ms, expiry far ahead", transport.Lease{ExpiresMS: now.Add(90 * time.Minute).UnixMilli()}, asked},
		{"no ttl_ms, expiry past", transport.Lease{ExpiresMS: now.Add(-time.Minute).UnixMilli()}, asked},
	} {
		if got := granted(tc.l, asked); got != tc.want {
			t.Errorf("%s: granted %v, want %v", tc.name, got, tc.want)
		}
	}
}
