package main

import (
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
)

// tokenLifetime verifies tok with app's key, as the relay would, and
// returns exp - iat.
func tokenLifetime(t *testing.T, app relay.App, tok string) time.Duration {
	t.Helper()
	a, err := relay.NewAuth([]relay.App{app}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	_, c, err := a.Verify(app.APIKey, tok)
	if err != nil {
		t.Fatalf("token refused: %v", err)
	}
	if c.IssuedAt == nil || c.ExpiresAt == nil {
		t.Fatalf("token lacks iat or exp: %+v", c.RegisteredClaims)
	}
	return c.ExpiresAt.Sub(c.IssuedAt.Time)
}

// `ferry token` issues a token for --ttl, 24 h unless told (docs/
// operations.md): exp - iat in the token itself, not what the help says.
func TestTokenTTL(t *testing.T) {
	path, app := testConfig(t, t.TempDir())
	for _, tc := range []struct {
		flags []string
		want  time.Duration
	}{
		{nil, 24 * time.Hour},
		{[]string{"--ttl", "1h"}, time.Hour},
	} {
		args := append([]string{"token", "--config", path, "--app", "shop", "--subject", "ann", "--read", "*"}, tc.flags...)
		tok := strings.TrimSpace(runOK(t, args...))
		if got := tokenLifetime(t, app, tok); got != tc.want {
			t.Errorf("ferry %s: token valid for %v, want %v", strings.Join(args, " "), got, tc.want)
		}
	}
}

// The token `ferry relay --dev` prints is valid for 30 days, as the
// banner and docs/getting-started.md say.
func TestDevRelayTokenLasts30Days(t *testing.T) {
	dir := t.TempDir()
	r := startInProcess(t, "relay", "--dev", "--data", dir, "--addr", "127.0.0.1:0", "--log-level", "error")
	r.stop(t)
	app, err := loadDevApp(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := tokenLifetime(t, app, r.token); got != 30*24*time.Hour {
		t.Fatalf("dev token valid for %v, want 30 days", got)
	}
	// The banner says so too.
	if !strings.Contains(r.out.String(), "valid 30 days") {
		t.Errorf("banner does not give the token's lifetime:\n%s", r.out.String())
	}
}
