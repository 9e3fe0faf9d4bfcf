package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/transport"
)

// Config is the relay's configuration file (JSON). Flags given on the
// command line override it.
type Config struct {
	Addr      string       `json:"addr"`       // listen address, host:port
	Data      string       `json:"data"`       // data folder
	RelayID   string       `json:"relay_id"`   // name in welcome messages
	LogLevel  string       `json:"log_level"`  // debug, info, warn, error
	LogFormat string       `json:"log_format"` // text or json
	Apps      []relay.App  `json:"apps"`       // tenants, with API keys and token secrets
	Limits    ConfigLimits `json:"limits"`

	MaxLeaseTTL     Duration `json:"max_lease_ttl"`
	DefaultLeaseTTL Duration `json:"default_lease_ttl"`
	MaxLag          int      `json:"max_lag"`          // log entries a subscriber may trail by
	ShutdownTimeout Duration `json:"shutdown_timeout"` // grace for in-flight requests
	AllowedOrigins  []string `json:"allowed_origins"`  // browser pages from other origins that may connect
}

// ConfigLimits overrides transport limits; zero keeps the default.
type ConfigLimits struct {
	MaxFrame  int `json:"max_frame"`
	MaxBatch  int `json:"max_batch"`
	MaxRecord int `json:"max_record"`
}

// Duration is a time.Duration written as "30s" in JSON.
type Duration time.Duration

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func loadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
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
	return l
}

func newLogger(level, format string, w *os.File) (*slog.Logger, error) {
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

// devApp loads the dev app from dir, creating it on first use.
func devApp(dir string) (relay.App, error) {
	path := filepath.Join(dir, devAppFile)
	b, err := os.ReadFile(path)
	if err == nil {
		var app relay.App
		if err := json.Unmarshal(b, &app); err != nil {
			return app, fmt.Errorf("%s: %w", path, err)
		}
		return app, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return relay.App{}, err
	}
	app := relay.NewApp("dev")
	b, _ = json.MarshalIndent(app, "", "  ")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return app, err
	}
	return app, os.WriteFile(path, b, 0o600)
}
