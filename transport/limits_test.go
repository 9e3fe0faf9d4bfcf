package transport

import (
	"strings"
	"testing"
)

func TestLimitsCheck(t *testing.T) {
	for _, tc := range []struct {
		l  Limits
		ok bool
	}{
		{Limits{}, true},
		{DefaultLimits(), true},
		{Limits{MaxRecord: 8 << 20, MaxFrame: 8<<20 + FrameOverhead}, true},
		{Limits{MaxRecord: 8<<20 + 1, MaxFrame: 8<<20 + FrameOverhead}, false},
		{Limits{MaxRecord: 8 << 20}, false}, // default frame too small
		{Limits{MaxFrame: 1 << 20}, false},  // default record too large
		{Limits{MaxFrame: FrameOverhead}, false},
	} {
		err := tc.l.Check()
		if (err == nil) != tc.ok {
			t.Errorf("%+v: Check() = %v, want ok=%v", tc.l, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "max_frame") {
			t.Errorf("%+v: error %q does not say what to change", tc.l, err)
		}
	}
}

func TestMaxInflatedFollowsMaxRecord(t *testing.T) {
	if l := (Limits{}).WithDefaults(); l.MaxInflated != DefaultMaxRecord {
		t.Errorf("default max_inflated %d, want %d", l.MaxInflated, DefaultMaxRecord)
	}
	if l := (Limits{MaxRecord: 3 << 20}).WithDefaults(); l.MaxInflated != 3<<20 {
		t.Errorf("max_inflated %d with max_record 3 MiB", l.MaxInflated)
	}
	if l := (Limits{MaxInflated: 5}).WithDefaults(); l.MaxInflated != 5 {
		t.Errorf("max_inflated %d, set to 5", l.MaxInflated)
	}
	if DefaultLimits() != (Limits{}).WithDefaults() {
		t.Errorf("DefaultLimits %+v, zero limits with defaults %+v", DefaultLimits(), (Limits{}).WithDefaults())
	}
}
