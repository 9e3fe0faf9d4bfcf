package bench

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestParseMetrics checks the /metrics reading on what the text format
// allows and a line-by-line reading gets wrong: a sample with a timestamp
// (whose last field is not the value), label values with spaces and
// escaped quotes, labels in any order, and histograms, whose _sum and
// _count the workloads read.
func TestParseMetrics(t *testing.T) {
	page := `# HELP ferry_relay_request_seconds Time to answer a request, by message type.
# TYPE ferry_relay_request_seconds histogram
ferry_relay_request_seconds_bucket{type="push",le="0.0001"} 3
ferry_relay_request_seconds_bucket{type="push",le="+Inf"} 5
ferry_relay_request_seconds_sum{type="push"} 0.25
ferry_relay_request_seconds_count{type="push"} 5
# TYPE ferry_relay_subscribers gauge
ferry_relay_subscribers 2 1700000000000
# TYPE odd_total counter
odd_total{b="two words",a="say \"hi\""} 7
process_resident_memory_bytes 1.5e+08
`
	got, err := parseMetrics(strings.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		mPushSeconds: 0.25,
		mPushes:      5,
		mSubscribers: 2,
		`odd_total{a="say \"hi\"",b="two words"}`: 7,
		"process_resident_memory_bytes":           1.5e8,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d series, want %d: %v", len(got), len(want), got)
	}

	for _, bad := range []string{
		"ferry_relay_subscribers two\n",
		"# TYPE g gauge\ng{a=\"unterminated} 1\n",
	} {
		if m, err := parseMetrics(strings.NewReader(bad)); err == nil {
			t.Errorf("parseMetrics(%q) = %v, want an error", bad, m)
		}
	}
}

// TestProcStatus checks the memory figures read from /proc: this
// process's resident set is non-zero and its peak at least that, a child
// is read by its pid, and a process that does not exist is an error.
func TestProcStatus(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc here")
	}
	self, err := procStatus("self")
	if err != nil {
		t.Fatal(err)
	}
	if self.VmRSS == 0 || self.VmHWM < self.VmRSS {
		t.Errorf("VmRSS %d, VmHWM %d", self.VmRSS, self.VmHWM)
	}
	byPid, err := procStatus(strconv.Itoa(os.Getpid()))
	if err != nil || byPid.PID != os.Getpid() || byPid.VmHWM == 0 {
		t.Errorf("by pid: %+v, %v", byPid, err)
	}
	if _, err := procStatus("999999999"); err == nil {
		t.Error("a missing process gave no error")
	}
	if _, err := procStatus("not-a-pid"); err == nil {
		t.Error("a bad pid gave no error")
	}
}
