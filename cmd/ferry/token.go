package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ferrysync/ferry/relay"
)

// TokenCommand issues an access token for an app:
//
//	ferry token --config relay.json --app shop --subject ann --write orders --read catalog
//	ferry token --dev --subject ann   (the dev app of ./ferry-data)
type TokenCommand struct {
	Stdout, Stderr io.Writer
}

func (c *TokenCommand) Run(ctx context.Context, args []string) error {
	fs := newFlags("token", c.Stderr)
	configPath := fs.String("config", "", "relay configuration file holding the app")
	dev := fs.Bool("dev", false, "use the dev app of the data folder")
	data := fs.String("data", "ferry-data", "data folder (with --dev)")
	appID := fs.String("app", "", "app ID (with --config)")
	subject := fs.String("subject", "", "user or device the token is for (required)")
	ttl := fs.Duration("ttl", 24*time.Hour, "lifetime")
	read := fs.String("read", "", "collections it may read, comma-separated; * for all")
	write := fs.String("write", "", "collections it may write (and read), comma-separated; * for all")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var app relay.App
	switch {
	case *dev:
		var err error
		if app, err = devApp(*data); err != nil {
			return err
		}
	case *configPath != "":
		cfg, err := loadConfig(*configPath)
		if err != nil {
			return err
		}
		found := false
		for _, a := range cfg.Apps {
			if a.ID == *appID {
				app, found = a, true
			}
		}
		if !found {
			return fmt.Errorf("token: no app %q in %s", *appID, *configPath)
		}
	default:
		return errors.New("token: pass --config FILE --app ID, or --dev")
	}
	if *subject == "" {
		return errors.New("token: --subject is required")
	}
	tok, err := relay.IssueToken(app, relay.TokenRequest{Subject: *subject, TTL: *ttl, Read: splitList(*read), Write: splitList(*write)}, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintln(c.Stdout, tok)
	return nil
}
