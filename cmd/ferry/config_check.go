package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ferrysync/ferry/relay"
)

// Defaults the relay applies to fields left out, which check compares
// with.
const (
	defaultMaxLeaseTTL = 5 * time.Minute
)

// check validates every field except limits (checked with the transport
// limits they set), naming the field in each problem; all problems are
// reported at once. Zero values mean the default and pass.
func (c *Config) check() error {
	var p problems
	c.checkRelay(&p)
	c.checkPostgres(&p)
	c.checkApps(&p)
	return errors.Join(p...)
}

// problems gathers what check finds, each naming its field.
type problems []error

func (p *problems) bad(field, format string, args ...any) {
	*p = append(*p, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

// checkRelay checks the relay's own fields: address, names, logging,
// durations, lags and TLS files.
func (c *Config) checkRelay(p *problems) {
	if c.Addr != "" {
		if err := checkAddr(c.Addr); err != nil {
			p.bad("addr", "%v", err)
		}
	}
	if len(c.RelayID) > 128 || !utf8.ValidString(c.RelayID) || strings.ContainsFunc(c.RelayID, unicode.IsControl) {
		p.bad("relay_id", "want at most 128 bytes of printable UTF-8")
	}
	if c.LogLevel != "" {
		var lv slog.Level
		if err := lv.UnmarshalText([]byte(c.LogLevel)); err != nil {
			p.bad("log_level", "%q: want debug, info, warn or error", c.LogLevel)
		}
	}
	if c.LogFormat != "" && c.LogFormat != "text" && c.LogFormat != "json" {
		p.bad("log_format", "%q: want text or json", c.LogFormat)
	}
	for name, d := range map[string]Duration{
		"max_lease_ttl": c.MaxLeaseTTL, "default_lease_ttl": c.DefaultLeaseTTL, "shutdown_timeout": c.ShutdownTimeout,
		"compact_interval": c.CompactInterval, "memory_wait": c.MemoryWait,
	} {
		if d < 0 {
			p.bad(name, "%v is negative (leave it out for the default)", time.Duration(d))
		}
	}
	maxTTL := time.Duration(c.MaxLeaseTTL)
	if maxTTL == 0 {
		maxTTL = defaultMaxLeaseTTL
	}
	if d := time.Duration(c.DefaultLeaseTTL); d > maxTTL {
		p.bad("default_lease_ttl", "%v is longer than max_lease_ttl (%v)", d, maxTTL)
	}
	if c.MaxLag < 0 {
		p.bad("max_lag", "%d is negative (leave it out for the default, 10000)", c.MaxLag)
	}
	if c.MaxMemory < 0 || c.MaxMemory > 0 && c.MaxMemory < minMaxMemory {
		p.bad("max_memory", "%d bytes: want at least %d (16 MiB; leave it out for the default, 256 MiB)", c.MaxMemory, minMaxMemory)
	}
	if c.LogRetention < 0 {
		p.bad("log_retention", "%d is negative (leave it out for the default, 100000)", c.LogRetention)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		p.bad("tls_cert, tls_key", "give both (the certificate chain and its private key) or neither")
	}
}

// checkPostgres checks the PostgreSQL store's keys (the connection string
// itself is parsed when the store opens).
func (c *Config) checkPostgres(p *problems) {
	if c.PostgresMaxConns < 0 || c.PostgresMaxConns > 10_000 {
		p.bad("postgres_max_conns", "%d: want 1 to 10000 (leave it out for the default, 10)", c.PostgresMaxConns)
	}
	if s := c.PostgresSchema; len(s) > 63 || !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl) {
		p.bad("postgres_schema", "want a PostgreSQL schema name: at most 63 bytes of printable UTF-8")
	}
	if (c.PostgresSchema != "" || c.PostgresMaxConns != 0) && c.Postgres == "" {
		p.bad("postgres_schema, postgres_max_conns", "only mean something with postgres (a connection string)")
	}
}

// checkApps checks each app: its id, key and secret, unique and random
// where they must be, and its quota.
func (c *Config) checkApps(p *problems) {
	ids, keys := map[string]int{}, map[string]int{}
	for i, app := range c.Apps {
		field := func(name string) string { return fmt.Sprintf("apps[%d].%s", i, name) }
		switch {
		case app.ID == "":
			p.bad(field("id"), "required")
		case len(app.ID) > 128 || strings.ContainsFunc(app.ID, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) }):
			p.bad(field("id"), "%q: want at most 128 bytes without spaces or control characters", app.ID)
		default:
			if j, dup := ids[app.ID]; dup {
				p.bad(field("id"), "%q is also the id of apps[%d]", app.ID, j)
			}
			ids[app.ID] = i
		}
		switch {
		case app.APIKey == "":
			p.bad(field("api_key"), "required")
		case placeholder(app.APIKey):
			p.bad(field("api_key"), "looks like a placeholder, not a key: generate one with \"openssl rand -hex 16\"")
		default:
			if j, dup := keys[app.APIKey]; dup {
				p.bad(field("api_key"), "is also the api_key of apps[%d]", j)
			}
			keys[app.APIKey] = i
		}
		before := len(*p)
		switch {
		case app.Secret == "" && len(app.Keys) > 0:
		case len(app.Secret) < 32:
			p.bad(field("secret"), "want at least 32 bytes (generate one with \"openssl rand -hex 32\"), or give keys")
		case placeholder(app.Secret):
			p.bad(field("secret"), "looks like a placeholder, not a random secret: generate one with \"openssl rand -hex 32\"")
		}
		c.checkKeys(p, i)
		if l := time.Duration(app.Leeway); l < 0 || l > 5*time.Minute {
			p.bad(field("leeway"), "%v: want 0 to 5m", l)
		}
		if len(*p) == before {
			// What is left to check (issuer with a JWKS, grants) the relay
			// checks as it would at start.
			if err := relay.CheckApps([]relay.App{c.Apps[i].app()}); err != nil {
				p.bad(field("keys"), "%v", err)
			}
		}
		// Check joins one error per field, each starting with its key.
		if err := app.Quota.Check(); err != nil {
			joined, ok := err.(interface{ Unwrap() []error })
			if !ok {
				p.bad(field("quota"), "%v", err)
				continue
			}
			for _, e := range joined.Unwrap() {
				*p = append(*p, fmt.Errorf("%s%w", field("quota."), e))
			}
		}
	}
}

// checkKeys checks app i's keys, reading each public_key_file.
func (c *Config) checkKeys(p *problems, i int) {
	for j := range c.Apps[i].Keys {
		k := &c.Apps[i].Keys[j]
		field := func(name string) string { return fmt.Sprintf("apps[%d].keys[%d]%s", i, j, name) }
		if k.PublicKeyFile != "" {
			if k.PublicKey != "" {
				p.bad(field(""), "public_key and public_key_file: give one")
				continue
			}
			b, err := os.ReadFile(k.PublicKeyFile)
			if err != nil {
				p.bad(field(".public_key_file"), "%v", err)
				continue
			}
			k.filePEM = string(b)
		}
		if k.Secret != "" && placeholder(k.Secret) {
			p.bad(field(".secret"), "looks like a placeholder, not a random secret: generate one with \"openssl rand -hex 32\"")
			continue
		}
		if err := k.key().Check(); err != nil {
			p.bad(field(""), "%v", err)
		}
	}
}

// checkAddr accepts host:port with a port from 0 to 65535; the host may be
// empty (every interface).
func checkAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port, such as 127.0.0.1:8080 or :8080", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	return nil
}

// placeholder reports whether a key or secret is text a person wrote
// rather than random bytes: the docs' examples ("fk_3a9...", "at least 32
// bytes of random hex ..."), spaces, angle brackets, or so few distinct
// characters that it cannot be random (a random hex string of 32 has
// about 14).
func placeholder(s string) bool {
	if strings.Contains(s, "...") || strings.ContainsAny(s, "<>…") || strings.ContainsFunc(s, unicode.IsSpace) {
		return true
	}
	distinct := map[rune]bool{}
	for _, r := range s {
		distinct[r] = true
	}
	return len(distinct) < 8
}

// minMaxMemory is the least memory budget the relay takes: room for a few
// ordinary documents and a page of max_frame.
const minMaxMemory = 16 << 20
