package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/transport"
)

func writeConfig(t *testing.T, dir, text string) string {
	t.Helper()
	path := filepath.Join(dir, "relay.json")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// appJSON is one valid app, as a JSON object.
func appJSON(t *testing.T, id string) string {
	b, err := json.Marshal(relay.NewApp(id))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestConfigRefusesBadFields(t *testing.T) {
	app := appJSON(t, "shop")
	for _, tc := range []struct {
		name, text string
		want       []string // in the error
	}{
		{"empty file", "", []string{"is empty"}},
		{"blank file", " \n\t\n", []string{"is empty"}},
		{"syntax", "{\n  \"addr\": \"x\",\n  oops\n}", []string{"line 3, column 3", "invalid character"}},
		{"cut short", `{"apps": [`, []string{"ends early"}},
		{"two objects", `{} {}`, []string{"line 1, column 4", "more after the JSON object"}},
		{"unknown key", `{"adr": ":8080"}`, []string{`unknown field "adr"`}},
		{"wrong type", `{"max_lag": "ten"}`, []string{"max_lag", "want a JSON int"}},
		{"bad duration", `{"max_lease_ttl": "5 minutes"}`, []string{`max_lease_ttl: "5 minutes" is not a duration`}},
		{"number duration", `{"shutdown_timeout": 30}`, []string{`shutdown_timeout: 30 is not a duration string`}},
		{"negative ttl", `{"max_lease_ttl": "-1s"}`, []string{"max_lease_ttl: -1s is negative"}},
		{"negative default ttl", `{"default_lease_ttl": "-30s"}`, []string{"default_lease_ttl: -30s is negative"}},
		{"negative shutdown", `{"shutdown_timeout": "-1m"}`, []string{"shutdown_timeout: -1m0s is negative"}},
		{"default over max", `{"max_lease_ttl": "1m", "default_lease_ttl": "2m"}`, []string{"default_lease_ttl: 2m0s is longer than max_lease_ttl (1m0s)"}},
		{"default over default max", `{"default_lease_ttl": "10m"}`, []string{"longer than max_lease_ttl (5m0s)"}},
		{"negative lag", `{"max_lag": -3}`, []string{"max_lag: -3 is negative"}},
		{"tiny memory", `{"max_memory": 1000}`, []string{"max_memory: 1000 bytes: want at least"}},
		{"negative memory wait", `{"memory_wait": "-1s"}`, []string{"memory_wait: -1s is negative"}},
		{"addr", `{"addr": "8080"}`, []string{`addr: "8080": want host:port`}},
		{"port", `{"addr": ":99999"}`, []string{`port "99999"`}},
		{"log level", `{"log_level": "loud"}`, []string{"log_level"}},
		{"log format", `{"log_format": "xml"}`, []string{"log_format"}},
		{"tls half", `{"tls_cert": "cert.pem"}`, []string{"tls_cert, tls_key: give both"}},
		{"docs' placeholder secret", `{"apps": [{"id": "shop", "api_key": "fk_3a9b7c1d2e4f", "secret": "at least 32 bytes of random hex ..."}]}`,
			[]string{"apps[0].secret: looks like a placeholder"}},
		{"docs' placeholder key", `{"apps": [{"id": "shop", "api_key": "fk_3a9...", "secret": "5f2a8c1e9b7d3f604a2c8e1b9d7f3a5c6e0b2d4f"}]}`,
			[]string{"apps[0].api_key: looks like a placeholder"}},
		{"repetitive secret", `{"apps": [{"id": "shop", "api_key": "fk_3a9b7c1d2e4f", "secret": "00000000000000000000000000000000"}]}`,
			[]string{"apps[0].secret: looks like a placeholder"}},
		{"short secret", `{"apps": [{"id": "shop", "api_key": "fk_3a9b7c1d2e4f", "secret": "5f2a8c1e9b7d"}]}`,
			[]string{"apps[0].secret: want at least 32 bytes"}},
		{"no id", `{"apps": [{"api_key": "fk_3a9b7c1d2e4f", "secret": "5f2a8c1e9b7d3f604a2c8e1b9d7f3a5c6e0b2d4f"}]}`,
			[]string{"apps[0].id: required"}},
		{"duplicate", `{"apps": [` + app + `,` + app + `]}`,
			[]string{`apps[1].id: "shop" is also the id of apps[0]`, "apps[1].api_key: is also the api_key of apps[0]"}},
		{"several at once", `{"max_lag": -1, "max_lease_ttl": "-1s"}`, []string{"max_lag", "max_lease_ttl"}},
		// Every kind of problem in one report, not one per run: an
		// unknown field, a wrong type, a bad value, a bad limit.
		{"every kind at once", `{"adr": ":8080", "max_lag": "ten", "max_lease_ttl": "-1s", "limits": {"max_frame": -1}}`,
			[]string{`unknown field "adr"`, "max_lease_ttl: -1s is negative", "limits: max_frame is negative"}},
		{"a wrong type and a bad value", `{"max_lag": "ten", "addr": "nonsense"}`,
			[]string{"max_lag", "want a JSON int", "addr:"}},
		{"more after, and a bad value", `{"max_lease_ttl": "-1s"} {}`,
			[]string{"more after the JSON object", "max_lease_ttl: -1s is negative"}},
	} {
		_, err := loadConfig(writeConfig(t, t.TempDir(), tc.text))
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", tc.name, err, w)
			}
		}
	}
}

func TestConfigResolvesPathsFromItsFolder(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, dir, `{"data": "relay-data", "tls_cert": "tls/cert.pem", "tls_key": "/etc/ferry/key.pem", "apps": [`+appJSON(t, "shop")+`],
		"max_lease_ttl": "10m", "default_lease_ttl": "1m", "max_lag": 500, "shutdown_timeout": "5s", "addr": ":8443"}`)
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Data != filepath.Join(dir, "relay-data") || cfg.TLSCert != filepath.Join(dir, "tls", "cert.pem") || cfg.TLSKey != "/etc/ferry/key.pem" {
		t.Fatalf("paths: data %q, cert %q, key %q", cfg.Data, cfg.TLSCert, cfg.TLSKey)
	}
}

// TestRelayRefusesBadFlags checks flags the way the file is checked, as
// usage errors (exit 2), before anything is created.
func TestRelayRefusesBadFlags(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	for _, args := range [][]string{
		{"--addr", "nonsense"},
		{"--log-level", "loud"},
		{"--tls-cert", "cert.pem"},
		{"--max-memory", "lots"},
		{"--max-memory", "1KiB"},
	} {
		code, _, errs := runCLI(t, append([]string{"relay", "--dev", "--data", data}, args...)...)
		if code != 2 {
			t.Errorf("%v: exit %d: %s", args, code, errs)
		}
		mustNotExist(t, data)
	}
}

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
		"negative record ops":        {`{"max_record_ops": -1}`, "max_record_ops is negative"},
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

// TestConfigQuotas: each app's quota loads as given and reaches the relay;
// bad values are refused naming the app's field, all at once.
func TestConfigQuotas(t *testing.T) {
	shop, rival := appJSON(t, "shop"), appJSON(t, "rival")
	withQuota := func(app, quota string) string { return strings.TrimSuffix(app, "}") + `, "quota": ` + quota + `}` }
	cfg, err := loadConfig(writeConfig(t, t.TempDir(), `{"apps": [`+
		withQuota(shop, `{"max_connections": 3, "pushes_per_second": 0.5, "push_burst": 4, "max_stored_bytes": 1000000}`)+`, `+rival+`]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]relay.Quota{"shop": {MaxConnections: 3, PushesPerSecond: 0.5, PushBurst: 4, MaxStoredBytes: 1000000}}
	if got := cfg.quotas(); len(got) != 1 || got["shop"] != want["shop"] {
		t.Fatalf("quotas = %+v, want %+v (rival has none: no limit)", got, want)
	}
	if apps := cfg.apps(); len(apps) != 2 || apps[0].ID != "shop" || apps[1].ID != "rival" || apps[0].Secret == "" {
		t.Fatalf("apps = %+v", apps)
	}

	for _, tc := range []struct {
		name, text string
		want       []string
	}{
		{"negative", `{"apps": [` + withQuota(shop, `{"max_connections": -1, "max_stored_bytes": -5}`) + `, ` +
			withQuota(rival, `{"pushes_per_second": -0.5}`) + `]}`,
			[]string{"apps[0].quota.max_connections: -1 is negative", "apps[0].quota.max_stored_bytes: -5 is negative", "apps[1].quota.pushes_per_second: -0.5 is negative"}},
		{"burst alone", `{"apps": [` + withQuota(shop, `{"push_burst": 10}`) + `]}`, []string{"apps[0].quota.push_burst: needs pushes_per_second"}},
		{"unknown key", `{"apps": [` + withQuota(shop, `{"max_conns": 10}`) + `]}`, []string{`unknown field "max_conns"`}},
		{"wrong type", `{"apps": [` + withQuota(shop, `{"max_connections": "ten"}`) + `]}`, []string{"max_connections", "want a JSON int"}},
		{"fraction of a connection", `{"apps": [` + withQuota(shop, `{"max_connections": 1.5}`) + `]}`, []string{"max_connections"}},
	} {
		_, err := loadConfig(writeConfig(t, t.TempDir(), tc.text))
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", tc.name, err, w)
			}
		}
	}
}

// TestRelayEnforcesConfiguredQuota runs the relay with a quota in its
// configuration file: the app's second connection is refused.
func TestRelayEnforcesConfiguredQuota(t *testing.T) {
	dir := t.TempDir()
	cfg, app := testConfigWith(t, dir, func(c *Config) { c.Apps[0].Quota = relay.Quota{MaxConnections: 1} })
	p := startRelay(t, "--config", cfg, "--data", filepath.Join(dir, "data"), "--addr", "127.0.0.1:0")
	first, err := dialRelay(t, p.url, app, "one")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := dialRelay(t, p.url, app, "two"); !errors.Is(err, transport.ErrRateLimited) {
		t.Fatalf("second connection: %v, want rate_limited (max_connections 1)", err)
	}
	p.stop(t)
}
