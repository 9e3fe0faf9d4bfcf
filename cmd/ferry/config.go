package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/transport"
)

// Config is the relay's configuration file (JSON). Flags given on the
// command line override it. Relative paths in the file (data, tls_cert,
// tls_key) are relative to the file's folder, so the file means the same
// whatever folder the relay is started from.
type Config struct {
	Addr      string       `json:"addr"`       // listen address, host:port
	Data      string       `json:"data"`       // data folder
	RelayID   string       `json:"relay_id"`   // name in welcome messages
	LogLevel  string       `json:"log_level"`  // debug, info, warn, error
	LogFormat string       `json:"log_format"` // text or json
	Apps      []AppConfig  `json:"apps"`       // tenants, with API keys, token secrets and quotas
	Limits    ConfigLimits `json:"limits"`

	MaxLeaseTTL     Duration `json:"max_lease_ttl"`
	DefaultLeaseTTL Duration `json:"default_lease_ttl"`
	MaxLag          int      `json:"max_lag"` // log entries a subscriber may trail by
	// CompactInterval is how often records whose tail outgrew their
	// snapshot are compacted; LogRetention how many of each collection's
	// latest log entries are kept (older ones go once snapshots hold them).
	CompactInterval Duration `json:"compact_interval"`
	LogRetention    int      `json:"log_retention"`
	ShutdownTimeout Duration `json:"shutdown_timeout"` // grace for in-flight requests
	// MaxMemory is the relay's memory budget in bytes (see
	// relay.Options.MaxMemory; 0: 256 MiB); MemoryWait how long work
	// waits for room in it before it is refused with busy (0: 2 s).
	MaxMemory  int64    `json:"max_memory"`
	MemoryWait Duration `json:"memory_wait"`

	// TLSCert and TLSKey are PEM files: with both, the relay serves wss://
	// itself, reloading them when they change.
	TLSCert string `json:"tls_cert"`
	TLSKey  string `json:"tls_key"`

	// AllowedOrigins are browser pages from other origins that may
	// connect (see docs/operations.md).
	AllowedOrigins []string `json:"allowed_origins"`

	// Postgres, a PostgreSQL connection string, puts the relay's store in
	// that database instead of the data folder, so that several relays can
	// share it. PostgresSchema names the schema (default "ferry"), and
	// PostgresMaxConns bounds this relay's pool (default 10).
	Postgres         string `json:"postgres"`
	PostgresSchema   string `json:"postgres_schema"`
	PostgresMaxConns int    `json:"postgres_max_conns"`
}

// AppConfig is one app of the configuration file: the app's ID, API key,
// secret, issuer, audience and grants (relay.App), its further token keys
// and clock leeway, and its quota (no key, or 0: no limit).
type AppConfig struct {
	relay.App
	Keys   []KeyConfig `json:"keys,omitempty"`
	Leeway Duration    `json:"leeway,omitempty"`
	Quota  relay.Quota `json:"quota,omitzero"`
}

// KeyConfig is one key of an app (see relay.Key): exactly one of secret,
// public_key (PEM text), public_key_file (a PEM file, relative to the
// configuration file's folder) and jwks_url.
type KeyConfig struct {
	ID            string   `json:"kid,omitempty"`
	Secret        string   `json:"secret,omitempty"`
	PublicKey     string   `json:"public_key,omitempty"`
	PublicKeyFile string   `json:"public_key_file,omitempty"`
	JWKSURL       string   `json:"jwks_url,omitempty"`
	Refresh       Duration `json:"refresh,omitempty"`
	Algorithms    []string `json:"algorithms,omitempty"`

	filePEM string // public_key_file's contents, read by check
}

func (k KeyConfig) key() relay.Key {
	pem := k.PublicKey
	if k.PublicKeyFile != "" {
		pem = k.filePEM
	}
	return relay.Key{ID: k.ID, Secret: k.Secret, PublicKey: pem, JWKSURL: k.JWKSURL, Refresh: time.Duration(k.Refresh), Algorithms: k.Algorithms}
}

// app is the relay's view of the app.
func (a AppConfig) app() relay.App {
	app := a.App
	app.Keys = nil
	for _, k := range a.Keys {
		app.Keys = append(app.Keys, k.key())
	}
	app.Leeway = time.Duration(a.Leeway)
	return app
}

// apps returns the configured apps.
func (c Config) apps() []relay.App {
	apps := make([]relay.App, len(c.Apps))
	for i, a := range c.Apps {
		apps[i] = a.app()
	}
	return apps
}

// quotas returns the configured apps' quotas, by app ID.
func (c Config) quotas() map[string]relay.Quota {
	q := map[string]relay.Quota{}
	for _, a := range c.Apps {
		if a.Quota != (relay.Quota{}) {
			q[a.ID] = a.Quota
		}
	}
	return q
}

// ConfigLimits overrides transport limits; zero keeps the default (for
// max_inflated, max_record's value). loadConfig refuses an inconsistent
// set: max_frame must hold a record of max_record alone.
type ConfigLimits struct {
	MaxFrame    int `json:"max_frame"`
	MaxBatch    int `json:"max_batch"`
	MaxRecord   int `json:"max_record"`
	MaxInflated int `json:"max_inflated"`
	// MaxRecordOps bounds the operations of one record, its values
	// counted too (its memory once loaded); zero keeps
	// transport.DefaultMaxRecordOps.
	MaxRecordOps int `json:"max_record_ops"`
}

// Duration is a time.Duration written as "30s" in JSON.
type Duration time.Duration

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s is not a duration string like \"30s\" or \"5m\"", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration like \"30s\" or \"5m\"", s)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// loadConfig reads and checks the configuration file at path. Every field
// is checked (see Config.check), so a mistake is reported when the relay
// starts, naming the field, rather than becoming a silent default.
func loadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return c, fmt.Errorf("config %s is empty: write a JSON object, such as {\"apps\": [...]} (see docs/operations.md)", path)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	// Every problem is reported at once, not one per run: a field of the
	// wrong type or an unknown one still leaves the rest decoded (the
	// json package goes on, and reports the first), so the checks run
	// too. Only JSON that does not parse stops here.
	var errs []error
	if err := dec.Decode(&c); err != nil {
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return c, fmt.Errorf("config %s: %s", path, jsonProblem(b, err))
		}
		errs = append(errs, errors.New(jsonProblem(b, err)))
	} else if rest := bytes.TrimLeft(b[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
		errs = append(errs, fmt.Errorf("%s: more after the JSON object", position(b, int64(len(b)-len(rest)))))
	}
	c.resolvePaths(filepath.Dir(path))
	errs = append(errs, c.check(), c.checkLimits())
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// checkLimits refuses negative limits and a set the relay could not serve
// (see transport.Limits.Check).
func (c Config) checkLimits() error {
	l := c.Limits
	for _, f := range []struct {
		name string
		v    int
	}{{"max_frame", l.MaxFrame}, {"max_batch", l.MaxBatch}, {"max_record", l.MaxRecord}, {"max_inflated", l.MaxInflated}, {"max_record_ops", l.MaxRecordOps}} {
		if f.v < 0 {
			return fmt.Errorf("limits: %s is negative", f.name)
		}
	}
	if err := c.limits().Check(); err != nil {
		return fmt.Errorf("limits: %w", err)
	}
	return nil
}

// resolvePaths makes the file's relative paths relative to its folder.
func (c *Config) resolvePaths(dir string) {
	paths := []*string{&c.Data, &c.TLSCert, &c.TLSKey}
	for i := range c.Apps {
		for j := range c.Apps[i].Keys {
			paths = append(paths, &c.Apps[i].Keys[j].PublicKeyFile)
		}
	}
	for _, p := range paths {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// jsonProblem words a decoding error with its line and column.
func jsonProblem(b []byte, err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		// Offset counts the bytes read, the bad one included.
		return fmt.Sprintf("%s: %v", position(b, syn.Offset-1), syn)
	case errors.As(err, &typ):
		return fmt.Sprintf("%s: %s: want a JSON %s, not %s", position(b, typ.Offset-1), typ.Field, typ.Type, typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "the JSON ends early (an unclosed { or [?)"
	}
	// A field's own decoding (a Duration) failed: encoding/json does not
	// say which field, so find it.
	var fields map[string]json.RawMessage
	if json.Unmarshal(b, &fields) == nil {
		for _, name := range []string{"max_lease_ttl", "default_lease_ttl", "shutdown_timeout", "compact_interval"} {
			var d Duration
			if raw, ok := fields[name]; ok {
				if ferr := d.UnmarshalJSON(raw); ferr != nil {
					return name + ": " + ferr.Error()
				}
			}
		}
	}
	var nested struct {
		Apps []struct {
			Leeway json.RawMessage `json:"leeway"`
			Keys   []struct {
				Refresh json.RawMessage `json:"refresh"`
			} `json:"keys"`
		} `json:"apps"`
	}
	if json.Unmarshal(b, &nested) == nil {
		for i, a := range nested.Apps {
			var d Duration
			if a.Leeway != nil {
				if ferr := d.UnmarshalJSON(a.Leeway); ferr != nil {
					return fmt.Sprintf("apps[%d].leeway: %v", i, ferr)
				}
			}
			for j, k := range a.Keys {
				if k.Refresh != nil {
					if ferr := d.UnmarshalJSON(k.Refresh); ferr != nil {
						return fmt.Sprintf("apps[%d].keys[%d].refresh: %v", i, j, ferr)
					}
				}
			}
		}
	}
	return err.Error()
}

// position is "line L, column C" of the byte at index i of b, both from 1.
func position(b []byte, i int64) string {
	i = max(0, min(i, int64(len(b))))
	line := 1 + bytes.Count(b[:i], []byte("\n"))
	col := i - int64(bytes.LastIndexByte(b[:i], '\n'))
	return fmt.Sprintf("line %d, column %d", line, col)
}

func (c Config) limits() transport.Limits {
	l := transport.DefaultLimits()
	if c.Limits.MaxFrame > 0 {
		l.MaxFrame = c.Limits.MaxFrame
	}
	if c.Limits.MaxBatch > 0 {
		l.MaxBatch = c.Limits.MaxBatch
	}
	if c.Limits.MaxRecord > 0 {
		l.MaxRecord = c.Limits.MaxRecord
	}
	// Unset, max_inflated follows max_record (see transport.Limits).
	l.MaxInflated = c.Limits.MaxInflated
	l.MaxRecordOps = c.Limits.MaxRecordOps
	return l.WithDefaults()
}

func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if level == "" {
		level = "info"
	}
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	o := &slog.HandlerOptions{Level: lv}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}

// devAppFile holds the dev mode's app in its data folder, so its API key and
// tokens stay valid across restarts.
const devAppFile = "dev-app.json"

// errNoDevApp means a data folder holds no dev app.
var errNoDevApp = errors.New("no dev app")

// loadDevApp reads the dev app of the data folder dir; it never creates
// one. A missing one gives an error matching errNoDevApp that says where
// it looked.
func loadDevApp(dir string) (relay.App, error) {
	var app relay.App
	path := filepath.Join(dir, devAppFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		abs, _ := filepath.Abs(path)
		return app, fmt.Errorf("%w: %s does not exist; `ferry relay --dev` creates it in its data folder (--data, default ./ferry-data): "+
			"run this where the relay runs, or pass the relay's --data", errNoDevApp, abs)
	}
	if err != nil {
		return app, err
	}
	if err := json.Unmarshal(b, &app); err != nil {
		return app, fmt.Errorf("%s: %w", path, err)
	}
	if app.ID == "" || app.APIKey == "" || len(app.Secret) < 32 {
		return app, fmt.Errorf("%s: want the fields id, api_key and secret (at least 32 bytes)", path)
	}
	return app, nil
}

// devApp loads the dev app from dir, creating it (and dir) on first use.
func devApp(dir string) (relay.App, error) {
	app, err := loadDevApp(dir)
	if !errors.Is(err, errNoDevApp) {
		return app, err
	}
	app = relay.NewApp("dev")
	b, _ := json.MarshalIndent(app, "", "  ")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return app, err
	}
	return app, writeFileAtomic(filepath.Join(dir, devAppFile), b, 0o600)
}

// writeFileAtomic writes a file whole or not at all: a crash leaves either
// no file or the complete one, never a truncated dev app.
func writeFileAtomic(path string, b []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename, there is nothing to remove
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncDir makes a rename or create in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
