package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/transport"
)

// TestConfigLimits: limits the relay could not serve are refused when the
// configuration loads, with the reason; consistent ones load as given.
func TestConfigLimits(t *testing.T) {
	write := func(body string) string {
		path := filepath.Join(t.TempDir(), "relay.json")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for name, tc := range map[string]struct {
		limits string
		want   string // in the error; "" for none
	}{
		"defaults":                   {`{}`, ""},
		"record raised with frame":   {`{"max_record": 8388608, "max_frame": 8454144}`, ""},
		"record raised alone":        {`{"max_record": 8388608}`, "max_frame"},
		"frame lowered below record": {`{"max_frame": 1048576}`, "max_frame"},
		"negative":                   {`{"max_inflated": -1}`, "max_inflated is negative"},
	} {
		path := write(`{"limits": ` + tc.limits + `}`)
		c, err := loadConfig(path)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one naming %q", name, err, tc.want)
		case err == nil:
			if err := c.limits().Check(); err != nil {
				t.Errorf("%s: loaded limits fail Check: %v", name, err)
			}
		}
	}
	c, err := loadConfig(write(`{"limits": {"max_record": 2097152, "max_frame": 4194304}}`))
	if err != nil {
		t.Fatal(err)
	}
	if l := c.limits(); l.MaxRecord != 2<<20 || l.MaxInflated != 2<<20 || l.MaxBatch != transport.DefaultMaxBatch {
		t.Errorf("limits = %+v; max_inflated should follow max_record", l)
	}
}
