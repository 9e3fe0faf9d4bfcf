// Package devrelay gives the examples their relay flags and credentials:
// the relay's URL, the app's API key, and an access token, by default those
// of the dev app that `go run ./cmd/ferry relay --dev` keeps in
// ./ferry-data/dev-app.json.
package devrelay

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/replica"
)

// DefaultURL is where `ferry relay --dev` listens.
const DefaultURL = "ws://127.0.0.1:8080/ws"

// DefaultAppFile is where `ferry relay --dev` stores its dev app, relative
// to the folder it was started in.
const DefaultAppFile = "ferry-data/dev-app.json"

// Flags are the relay flags every example takes.
type Flags struct {
	URL     string // the relay's WebSocket URL
	APIKey  string // the app's API key
	Token   string // a static access token
	AppFile string // the dev app (id, api_key, secret), for whatever the flags above leave out
}

// Register adds the flags to fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.URL, "url", DefaultURL, "relay URL")
	fs.StringVar(&f.APIKey, "api-key", "", "the app's API key (default: from --dev-app)")
	fs.StringVar(&f.Token, "token", "", "access token (default: minted from --dev-app's secret)")
	fs.StringVar(&f.AppFile, "dev-app", DefaultAppFile, "the dev app file that ferry relay --dev writes (for what --api-key and --token leave out)")
}

// Credentials are what a sync profile needs to reach the relay.
type Credentials struct {
	URL    string
	APIKey string
	// Tokens gives the profile its access token (Options.TokenSource): the
	// static one from --token, or one minted afresh on each call.
	Tokens replica.TokenSource
}

// Credentials resolves the flags. What --api-key and --token do not give is
// read from the dev app file.
func (f *Flags) Credentials() (Credentials, error) {
	c := Credentials{URL: f.URL, APIKey: f.APIKey, Tokens: f.Tokens}
	if c.APIKey != "" {
		return c, nil
	}
	app, err := loadApp(f.AppFile)
	if err != nil {
		return c, err
	}
	c.APIKey = app.APIKey
	return c, nil
}

// Tokens is a replica.TokenSource: the static token of --token, or one
// minted afresh from the dev app file at each call.
func (f *Flags) Tokens(ctx context.Context, profile string) (string, error) {
	if f.Token != "" {
		return f.Token, nil
	}
	app, err := loadApp(f.AppFile)
	if err != nil {
		return "", err
	}
	// Dev only: the example signs its own tokens with the app's secret,
	// as the relay's `ferry token --dev` does. A real app never holds the
	// secret: its login service issues tokens (see docs/operations.md)
	// and the app fetches them in a token source.
	return relay.IssueToken(app, relay.TokenRequest{
		Subject: "example", TTL: time.Hour, Write: []string{"*"},
	}, time.Now())
}

func loadApp(path string) (relay.App, error) {
	var app relay.App
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return app, fmt.Errorf("no credentials: %s does not exist; start the relay with `go run ./cmd/ferry relay --dev` "+
			"in this folder, or pass --api-key and --token", path)
	}
	if err != nil {
		return app, err
	}
	if err := json.Unmarshal(b, &app); err != nil {
		return app, fmt.Errorf("%s: %w", path, err)
	}
	if app.ID == "" || app.APIKey == "" || app.Secret == "" {
		return app, fmt.Errorf("%s: want the fields id, api_key and secret", path)
	}
	return app, nil
}
