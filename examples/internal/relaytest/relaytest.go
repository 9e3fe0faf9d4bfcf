// Package relaytest starts a relay in memory for the examples' tests.
package relaytest

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
)

// Relay is a relay on loopback with one app.
type Relay struct {
	URL     string
	App     relay.App
	Token   string // read and write on every collection, valid an hour
	AppFile string // the app as `ferry relay --dev` writes it
}

// Start starts a relay with an in-memory store; t.Cleanup stops it.
func Start(t testing.TB) *Relay {
	t.Helper()
	app := relay.NewApp("dev")
	auth, err := relay.NewAuth([]relay.App{app}, nil)
	if err != nil {
		t.Fatal(err)
	}
	store := relay.NewMemStore()
	srv, err := relay.NewServer(&relay.Options{Store: store, Auth: auth, PingInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		hs.Close()
		store.Close()
	})
	tok, err := relay.IssueToken(app, relay.TokenRequest{Subject: "test", TTL: time.Hour, Write: []string{"*"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	appFile := filepath.Join(t.TempDir(), "dev-app.json")
	b, _ := json.Marshal(app)
	if err := os.WriteFile(appFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return &Relay{URL: "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws", App: app, Token: tok, AppFile: appFile}
}

// TokenArgs are the flags that point an example at the relay with a static
// token.
func (r *Relay) TokenArgs() []string {
	return []string{"--url", r.URL, "--api-key", r.App.APIKey, "--token", r.Token}
}

// AppFileArgs are the flags that point an example at the relay with the
// dev app file, from which it mints its own tokens.
func (r *Relay) AppFileArgs() []string {
	return []string{"--url", r.URL, "--dev-app", r.AppFile}
}
