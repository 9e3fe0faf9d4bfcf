package pgstore_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/internal/pgtest"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/relaytest"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// Two relays sharing a database, each with the same app configuration,
// verify an identity provider's tokens the same way: each fetches the
// provider's JWKS itself (nothing about keys is in the database), both
// accept a token and grant by the subject template, both refuse a token
// for another audience, and after each reloads without a key, a device
// on either is refused at its next request.
func TestRelaysSharingPostgresVerifyTokensAlike(t *testing.T) {
	idp := relaytest.StartIdP(t)
	idp.AddKey(t, "k1", "RS256")
	app := relay.NewApp("notes")
	app.Secret = ""
	app.Issuer = idp.Issuer
	app.Keys = []relay.Key{{JWKSURL: idp.URL}}
	app.Grants = relay.Grants{Write: []string{"notes-{sub}"}}
	schema := pgtest.Schema(t)
	var auths []*relay.Auth
	var urls []string
	for i := range 2 {
		st := open(t, schema, nil)
		auth, err := relay.NewAuth([]relay.App{app}, nil)
		if err != nil {
			t.Fatal(err)
		}
		auths = append(auths, auth)
		urls = append(urls, serveRelay(t, &relay.Options{Store: st, Auth: auth, PingInterval: -1}, func() { st.Close(); auth.Close() }))
		if got := idp.Fetches(); got != i+1 {
			t.Fatalf("%d JWKS fetches after relay %d started", got, i+1)
		}
	}
	dial := func(i int, tok string) (*transport.Client, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := transport.Dial(ctx, urls[i], &transport.Options{PingInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		c := transport.NewClient(conn, nil)
		t.Cleanup(func() { c.Close() })
		return c, c.Call(ctx, &transport.Hello{APIKey: app.APIKey, Token: tok, ReplicaID: "r", Versions: transport.SupportedVersions()}, &transport.Welcome{})
	}
	tok := idp.Token(t, "k1", "ann", "notes", time.Now(), time.Hour, nil)
	wrongAud := idp.Token(t, "k1", "ann", "other-app", time.Now(), time.Hour, nil)
	var devices []*transport.Client
	for i := range 2 {
		c, err := dial(i, tok)
		if err != nil {
			t.Fatalf("relay %d refused the token: %v", i+1, err)
		}
		devices = append(devices, c)
		if _, err := dial(i, wrongAud); err == nil {
			t.Fatalf("relay %d accepted a token for another audience", i+1)
		}
		if _, err := call[transport.Changes](c, &transport.Pull{Collection: "notes-bob"}); err == nil {
			t.Fatalf("relay %d let ann read notes-bob", i+1)
		}
	}
	ed := storetest.NewEditor(t, "ab01")
	must[transport.Ack](t, devices[0], push("notes-ann", 0, "r1", ed.Edit(map[string]any{"title": "x"})))
	if ch := must[transport.Changes](t, devices[1], &transport.Pull{Collection: "notes-ann"}); len(ch.Records) != 1 {
		t.Fatalf("relay 2 pulled %+v", ch)
	}

	// Each relay reloads without the JWKS (ferry relay on SIGHUP).
	noKeys := app
	noKeys.Keys, noKeys.Secret = nil, strings.Repeat("7c", 20)
	noKeys.Issuer = ""
	for i, a := range auths {
		if err := a.Reload([]relay.App{noKeys}); err != nil {
			t.Fatal(err)
		}
		_, err := call[transport.Changes](devices[i], &transport.Pull{Collection: "notes-ann"})
		wantCode(t, "after the reload", err, transport.CodeTokenExpired)
	}
}
