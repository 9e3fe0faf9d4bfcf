package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/relaytest"
	"github.com/ferrysync/ferry/transport"
)

// writeECKey writes a new P-256 public key to dir/name and returns its
// private half.
func writeECKey(t *testing.T, dir, name string) *ecdsa.PrivateKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return priv
}

const keysAppJSON = `{"apps": [{"id": "notes", "api_key": "fk_5f2a8c1e9b7d3f60", "issuer": "https://login.example/",
  "keys": [%s], "leeway": "30s", "grants": {"write": ["notes-{sub}"]}}]}`

func TestConfigKeys(t *testing.T) {
	dir := t.TempDir()
	writeECKey(t, dir, "a.pem")
	cfg, err := loadConfig(writeConfig(t, dir, strings.Replace(keysAppJSON, "%s",
		`{"kid": "a", "public_key_file": "a.pem", "algorithms": ["ES256"]}, {"jwks_url": "https://login.example/.well-known/jwks.json", "refresh": "15m"}`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	app := cfg.apps()[0]
	if len(app.Keys) != 2 || !strings.HasPrefix(app.Keys[0].PublicKey, "-----BEGIN PUBLIC KEY") || app.Keys[1].Refresh != 15*time.Minute ||
		app.Leeway != 30*time.Second || app.Grants.Write[0] != "notes-{sub}" || app.Secret != "" {
		t.Fatalf("app %+v", app)
	}

	for _, tc := range []struct{ name, keys, want string }{
		{"two kinds in one key", `{"secret": "5f2a8c1e9b7d3f604a2c8e1b9d7f3a5c6e0b2d4f", "jwks_url": "https://x/"}`, "apps[0].keys[0]: want exactly one"},
		{"missing file", `{"public_key_file": "nope.pem"}`, "apps[0].keys[0].public_key_file"},
		{"file and text", `{"public_key_file": "a.pem", "public_key": "x"}`, "apps[0].keys[0]: public_key and public_key_file"},
		{"HMAC with a public key", `{"public_key_file": "a.pem", "algorithms": ["HS256"]}`, `algorithm "HS256" cannot be used`},
		{"none", `{"jwks_url": "https://x/", "algorithms": ["none"]}`, `algorithm "none" cannot be used`},
		{"placeholder secret", `{"secret": "at least 32 bytes of random hex ..."}`, "apps[0].keys[0].secret: looks like a placeholder"},
		{"no keys at all", ``, "apps[0].secret: want at least 32 bytes"},
	} {
		_, err := loadConfig(writeConfig(t, dir, strings.Replace(keysAppJSON, "%s", tc.keys, 1)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	for _, tc := range []struct{ name, text, want string }{
		{"JWKS without issuer", `{"apps": [{"id": "n", "api_key": "fk_5f2a8c1e9b7d3f60", "keys": [{"jwks_url": "https://x/"}]}]}`, "needs an issuer"},
		{"leeway", `{"apps": [{"id": "n", "api_key": "fk_5f2a8c1e9b7d3f60", "secret": "5f2a8c1e9b7d3f604a2c8e1b9d7f3a5c6e0b2d4f", "leeway": "1h"}]}`, "apps[0].leeway: 1h0m0s"},
		{"template", `{"apps": [{"id": "n", "api_key": "fk_5f2a8c1e9b7d3f60", "secret": "5f2a8c1e9b7d3f604a2c8e1b9d7f3a5c6e0b2d4f", "grants": {"read": ["{user}"]}}]}`, "the only placeholder is {sub}"},
		{"leeway not a duration", `{"apps": [{"id": "n", "api_key": "fk_5f2a8c1e9b7d3f60", "secret": "5f2a8c1e9b7d3f604a2c8e1b9d7f3a5c6e0b2d4f", "leeway": "half a minute"}]}`, `apps[0].leeway: "half a minute" is not a duration`},
		{"refresh not a duration", `{"apps": [{"id": "n", "api_key": "fk_5f2a8c1e9b7d3f60", "issuer": "https://x/", "keys": [{"jwks_url": "https://x/", "refresh": 60}]}]}`, `apps[0].keys[0].refresh: 60 is not a duration string`},
	} {
		_, err := loadConfig(writeConfig(t, dir, tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// `ferry relay` reloads its apps' keys on SIGHUP: a connected device
// whose token the removed key signed gets token_expired at its next
// request, sends a token of the new key on the same connection, and goes
// on. A file that does not load changes nothing.
func TestRelayReloadsKeysOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	keyA, keyB := writeECKey(t, dir, "a.pem"), writeECKey(t, dir, "b.pem")
	withKey := func(kid string) string {
		return strings.Replace(keysAppJSON, "%s", `{"kid": "`+kid+`", "public_key_file": "`+kid+`.pem"}`, 1)
	}
	cfgPath := writeConfig(t, dir, withKey("a"))
	r := startInProcess(t, "relay", "--config", cfgPath, "--data", filepath.Join(dir, "data"), "--addr", "127.0.0.1:0")
	var tokens []string
	sign := func(priv *ecdsa.PrivateKey, kid, sub string) string {
		tk := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"iss": "https://login.example/", "aud": "notes", "sub": sub, "exp": time.Now().Add(time.Hour).Unix()})
		tk.Header["kid"] = kid
		s, err := tk.SignedString(priv)
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, s)
		return s
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := transport.Dial(ctx, r.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewClient(conn, nil)
	defer c.Close()
	if err := c.Call(ctx, &transport.Hello{APIKey: "fk_5f2a8c1e9b7d3f60", Token: sign(keyA, "a", "ann"), ReplicaID: "r", Versions: transport.SupportedVersions()}, &transport.Welcome{}); err != nil {
		t.Fatal(err)
	}
	// The subject template grants notes-ann, and nothing else.
	if err := c.Call(ctx, &transport.Pull{Collection: "notes-ann"}, &transport.Changes{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx, &transport.Pull{Collection: "notes-bob"}, &transport.Changes{}); !errors.Is(err, transport.ErrForbidden) {
		t.Fatalf("pull of another user's collection: %v", err)
	}

	hup := func(wantLog string) {
		t.Helper()
		changed := r.out.changed()
		n := strings.Count(r.out.String(), wantLog)
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		for strings.Count(r.out.String(), wantLog) == n {
			select {
			case <-changed:
				changed = r.out.changed()
			case <-ctx.Done():
				t.Fatalf("no %q in the log:\n%s", wantLog, r.out.String())
			}
		}
	}
	replaceFile(t, cfgPath, []byte(withKey("b")))
	hup("apps reloaded on SIGHUP")
	err = c.Call(ctx, &transport.Pull{Collection: "notes-ann"}, &transport.Changes{})
	if !errors.Is(err, transport.ErrTokenExpired) {
		t.Fatalf("request with the removed key's token: %v, want token_expired", err)
	}
	if err := c.Call(ctx, &transport.Auth{Token: sign(keyB, "b", "ann")}, &transport.OK{}); err != nil {
		t.Fatalf("auth with the new key's token: %v", err)
	}
	if err := c.Call(ctx, &transport.Pull{Collection: "notes-ann"}, &transport.Changes{}); err != nil {
		t.Fatalf("request after auth, on the same connection: %v", err)
	}

	replaceFile(t, cfgPath, []byte(`{"apps": [`))
	hup("reload on SIGHUP failed")
	if err := c.Call(ctx, &transport.Pull{Collection: "notes-ann"}, &transport.Changes{}); err != nil {
		t.Fatalf("after a failed reload: %v", err)
	}
	for _, tok := range tokens {
		if strings.Contains(r.out.String(), tok) {
			t.Error("the log holds a token")
		}
	}
	r.stop(t)
}

// `ferry token` signs with the app's first key that has a secret, naming
// its kid, and says so when the app has none.
func TestTokenWithKeys(t *testing.T) {
	dir := t.TempDir()
	writeECKey(t, dir, "a.pem")
	path := writeConfig(t, dir, strings.Replace(keysAppJSON, "%s",
		`{"kid": "a", "public_key_file": "a.pem"}, {"kid": "s1", "secret": "5f2a8c1e9b7d3f604a2c8e1b9d7f3a5c6e0b2d4f"}`, 1))
	var out, errb strings.Builder
	if err := run(context.Background(), []string{"token", "--config", path, "--app", "notes", "--subject", "ann"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	a, err := relay.NewAuth(cfg.apps(), nil)
	if err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(out.String())
	_, c, err := a.Verify("fk_5f2a8c1e9b7d3f60", tok)
	if err != nil || !c.CanWrite("notes-ann") || c.Issuer != "https://login.example/" {
		t.Fatalf("minted token: %v %+v", err, c)
	}
	if hdr, _, _ := strings.Cut(tok, "."); hdr != "eyJhbGciOiJIUzI1NiIsImtpZCI6InMxIiwidHlwIjoiSldUIn0" {
		t.Errorf("header %s does not name kid s1", hdr)
	}

	path = writeConfig(t, dir, strings.Replace(keysAppJSON, "%s", `{"kid": "a", "public_key_file": "a.pem"}`, 1))
	err = run(context.Background(), []string{"token", "--config", path, "--app", "notes", "--subject", "ann"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "no HMAC secret") {
		t.Fatalf("token for an app without a secret: %v", err)
	}
}

// The worked example of docs/operations.md, "Tokens from an identity
// provider", run as written there, with the provider's URLs pointing to a
// local one: its configuration loads, and a token like the one shown
// grants what the text says.
func TestOperationsIdentityProviderExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(doc), "### A worked example")
	_, block, ok2 := strings.Cut(sec, "```json\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("docs/operations.md has no worked example with a JSON block")
	}
	idp := relaytest.StartIdP(t)
	idp.AddKey(t, "2026-11", "RS256")
	cfgText := strings.NewReplacer(
		"<fk_ and: openssl rand -hex 16>", "fk_5f2a8c1e9b7d3f60",
		"https://login.example.com/.well-known/jwks.json", idp.URL,
		"https://login.example.com/", idp.Issuer,
	).Replace(block)
	dir := t.TempDir()
	r := startInProcess(t, "relay", "--config", writeConfig(t, dir, cfgText), "--data", filepath.Join(dir, "data"), "--addr", "127.0.0.1:0", "--log-level", "warn")

	tok := idp.Token(t, "2026-11", "user-42", "https://notes.example.com/api", time.Now(), time.Hour, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := transport.Dial(ctx, r.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewClient(conn, nil)
	defer c.Close()
	if err := c.Call(ctx, &transport.Hello{APIKey: "fk_5f2a8c1e9b7d3f60", Token: tok, ReplicaID: "r", Versions: transport.SupportedVersions()}, &transport.Welcome{}); err != nil {
		t.Fatalf("the example's token: %v", err)
	}
	for _, tc := range []struct {
		req  transport.Body
		want error
	}{
		{&transport.Pull{Collection: "catalog"}, nil},
		{&transport.Pull{Collection: "notes-user-42"}, nil},
		{&transport.LeaseAcquire{Collection: "notes-user-42", TTLMS: 1000}, nil},
		{&transport.LeaseAcquire{Collection: "catalog", TTLMS: 1000}, transport.ErrForbidden},
		{&transport.Pull{Collection: "notes-user-7"}, transport.ErrForbidden},
	} {
		var resp transport.Body = &transport.Changes{}
		if _, ok := tc.req.(*transport.LeaseAcquire); ok {
			resp = &transport.Lease{} // taking the lease needs the write right
		}
		if err := c.Call(ctx, tc.req, resp); (tc.want == nil) != (err == nil) || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s %+v: %v, want %v", tc.req.MessageType(), tc.req, err, tc.want)
		}
	}
	// A token for another audience is refused.
	other := idp.Token(t, "2026-11", "user-42", "notes", time.Now(), time.Hour, nil)
	conn2, err := transport.Dial(ctx, r.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	c2 := transport.NewClient(conn2, nil)
	defer c2.Close()
	if err := c2.Call(ctx, &transport.Hello{APIKey: "fk_5f2a8c1e9b7d3f60", Token: other, ReplicaID: "r", Versions: transport.SupportedVersions()}, &transport.Welcome{}); !errors.Is(err, transport.ErrUnauthenticated) {
		t.Fatalf("a token for another audience: %v", err)
	}
}
