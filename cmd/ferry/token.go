package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/replica"
)

// TokenCommand issues an access token for an app:
//
//	ferry token --config relay.json --app shop --subject ann --write orders --read catalog
//	ferry token --dev --subject ann   (the dev app of ./ferry-data)
//
// It never creates anything: with --dev, the dev app must exist (the relay
// creates it), or the token would be for an app the relay does not know.
type TokenCommand struct {
	Stdout, Stderr io.Writer
}

const tokenHelp = `Usage: ferry token --config FILE --app ID --subject WHO [flags]
       ferry token --dev [--data FOLDER] --subject WHO [flags]

Issues an access token (an HS256 JWT) for an app of a relay: one listed in
the relay's configuration file, or the dev app that "ferry relay --dev"
keeps in its data folder. Prints the token.
`

func (c *TokenCommand) Run(ctx context.Context, args []string) error {
	fs := newFlags("token")
	configPath := fs.String("config", "", "relay configuration `file` holding the app")
	dev := fs.Bool("dev", false, "use the dev app of the relay's data folder")
	data := fs.String("data", "ferry-data", "the relay's data `folder` (with --dev)")
	appID := fs.String("app", "", "app `ID` (with --config)")
	subject := fs.String("subject", "", "user or device the token is for (required)")
	ttl := fs.Duration("ttl", 24*time.Hour, "lifetime")
	read := fs.String("read", "", "`collections` it may read, comma-separated; * for all")
	write := fs.String("write", "", "`collections` it may write (and read), comma-separated; * for all")
	if err := parse(fs, args, c.Stdout, tokenHelp); err != nil {
		return err
	}
	switch {
	case *dev && *configPath != "":
		return usagef(fs, "--dev and --config exclude each other")
	case !*dev && *configPath == "":
		return usagef(fs, "pass --config FILE --app ID, or --dev")
	case *configPath != "" && *appID == "":
		return usagef(fs, "--config needs --app")
	case *subject == "":
		return usagef(fs, "--subject is required")
	case *ttl <= 0:
		return usagef(fs, "--ttl %v is not positive", *ttl)
	}
	readList, writeList := splitList(*read), splitList(*write)
	for flagName, list := range map[string][]string{"read": readList, "write": writeList} {
		for _, name := range list {
			// The replica's rule: a token for a name no device can
			// open grants nothing.
			if err := replica.ValidateCollection(name); name != "*" && err != nil {
				return usagef(fs, "--%s: %w", flagName, err)
			}
		}
	}
	var app relay.App
	if *dev {
		var err error
		if app, err = loadDevApp(*data); err != nil {
			return fmt.Errorf("token: %w", err)
		}
	} else {
		cfg, err := loadConfig(*configPath)
		if err != nil {
			return err
		}
		found := false
		for _, a := range cfg.Apps {
			if a.ID == *appID {
				app, found = a.App, true
			}
		}
		if !found {
			return fmt.Errorf("token: no app %q in %s", *appID, *configPath)
		}
	}
	tok, err := relay.IssueToken(app, relay.TokenRequest{Subject: *subject, TTL: *ttl, Read: readList, Write: writeList}, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintln(c.Stdout, tok)
	return nil
}
