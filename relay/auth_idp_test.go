package relay_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/relaytest"
)

// clock is a settable clock, safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// idpApp is an app whose tokens come from idp's JWKS.
func idpApp(idp *relaytest.IdP) relay.App {
	app := relay.NewApp("notes")
	app.Secret = ""
	app.Keys = []relay.Key{{JWKSURL: idp.URL}}
	app.Issuer = idp.Issuer
	return app
}

func newAuth(t *testing.T, apps []relay.App, now func() time.Time) *relay.Auth {
	t.Helper()
	a, err := relay.NewAuthWith(apps, &relay.AuthOptions{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// wantRefused checks that err is a refusal of check, matching kind.
func wantRefused(t *testing.T, what string, err error, check string, kind error) {
	t.Helper()
	if got := relay.RefusedCheck(err); got != check || !errors.Is(err, kind) {
		t.Errorf("%s: err %v (check %q), want check %q matching %v", what, err, got, check, kind)
	}
}

// Every algorithm verifies, both from a PEM public key and from a JWKS,
// and the token's read and write claims become its rights.
func TestAuthEveryAlgorithm(t *testing.T) {
	clk := newClock()
	idp := relaytest.StartIdP(t)
	algs := []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
	for _, alg := range algs {
		idp.AddKey(t, "k-"+alg, alg)
	}
	viaJWKS := idpApp(idp)
	viaPEM := relay.NewApp("pem")
	viaPEM.Secret = ""
	viaPEM.Issuer = idp.Issuer
	for _, alg := range algs {
		viaPEM.Keys = append(viaPEM.Keys, relay.Key{ID: "k-" + alg, PublicKey: idp.PublicKeyPEM(t, "k-"+alg)})
	}
	a := newAuth(t, []relay.App{viaJWKS, viaPEM}, clk.Now)
	for _, alg := range algs {
		for _, app := range []relay.App{viaJWKS, viaPEM} {
			tok := idp.Token(t, "k-"+alg, "ann", app.ID, clk.Now(), time.Hour, map[string]any{"read": []string{"catalog"}, "write": []string{"notes"}})
			got, c, err := a.Verify(app.APIKey, tok)
			if err != nil {
				t.Errorf("%s via %s: %v", alg, app.ID, err)
				continue
			}
			if got.ID != app.ID || c.Subject != "ann" || !c.CanRead("catalog") || c.CanWrite("catalog") || !c.CanWrite("notes") {
				t.Errorf("%s via %s: app %s, claims %+v", alg, app.ID, got.ID, c)
			}
			if err := a.Check(c, clk.Now()); err != nil {
				t.Errorf("%s via %s: Check: %v", alg, app.ID, err)
			}
		}
	}
	// HMAC secrets, each of the three algorithms.
	shop := relay.NewApp("shop")
	a2 := newAuth(t, []relay.App{shop}, clk.Now)
	for _, m := range []jwt.SigningMethod{jwt.SigningMethodHS256, jwt.SigningMethodHS384, jwt.SigningMethodHS512} {
		tok, _ := jwt.NewWithClaims(m, jwt.MapClaims{"sub": "ann", "aud": "shop", "exp": clk.Now().Add(time.Hour).Unix()}).SignedString([]byte(shop.Secret))
		if _, _, err := a2.Verify(shop.APIKey, tok); err != nil {
			t.Errorf("%s: %v", m.Alg(), err)
		}
	}
}

// A token never gets a key of another type than its algorithm names: the
// public key's bytes are no HMAC secret, "none" is refused, and the
// algorithms a key allows are all it verifies.
func TestAuthAlgorithmConfusion(t *testing.T) {
	clk := newClock()
	idp := relaytest.StartIdP(t)
	idp.AddKey(t, "rsa", "RS256")
	pemText := idp.PublicKeyPEM(t, "rsa")
	// A symmetric key in a published set must never verify anything.
	idp.PublishRaw(`{"kty":"oct","kid":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0","alg":"HS256"}`)

	pemApp := relay.NewApp("pem")
	pemApp.Secret = ""
	pemApp.Keys = []relay.Key{{PublicKey: pemText}}
	es := relay.NewApp("es")
	es.Secret = ""
	es.Keys = []relay.Key{{JWKSURL: idp.URL, Algorithms: []string{"ES256"}}}
	es.Issuer = idp.Issuer
	jw := idpApp(idp)
	a := newAuth(t, []relay.App{pemApp, es, jw}, clk.Now)

	claims := func(aud string) jwt.MapClaims {
		return jwt.MapClaims{"iss": idp.Issuer, "sub": "eve", "aud": aud, "exp": clk.Now().Add(time.Hour).Unix(), "write": []string{"*"}}
	}
	hs := func(secret []byte, aud, kid string) string {
		tk := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(aud))
		if kid != "" {
			tk.Header["kid"] = kid
		}
		s, err := tk.SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims("pem")).SignedString(jwt.UnsafeAllowNoneSignatureType)
	octSecret := []byte("secret-secret-secret-secret-secret-1234")
	for name, tc := range map[string]struct {
		app relay.App
		tok string
	}{
		"HS256 keyed with the PEM text":           {pemApp, hs([]byte(pemText), "pem", "")},
		"alg none":                                {pemApp, none},
		"HS256 with the set's symmetric key":      {jw, hs(octSecret, "notes", "oct")},
		"RS256 where only ES256 is allowed":       {es, idp.Token(t, "rsa", "eve", "es", clk.Now(), time.Hour, nil)},
		"HS256 keyed with the PEM text, via JWKS": {jw, hs([]byte(pemText), "notes", "rsa")},
	} {
		_, _, err := a.Verify(tc.app.APIKey, tc.tok)
		wantRefused(t, name, err, relay.CheckAlgorithm, relay.ErrUnauthenticated)
	}
	// The right algorithm still works.
	if _, _, err := a.Verify(jw.APIKey, idp.Token(t, "rsa", "ann", "notes", clk.Now(), time.Hour, nil)); err != nil {
		t.Fatal(err)
	}

	// Configurations that would allow confusion are refused.
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKIXPublicKey(&ecKey.PublicKey)
	ecPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: ecDER}))
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	weakDER, _ := x509.MarshalPKIXPublicKey(&weak.PublicKey)
	privDER, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	for name, k := range map[string]relay.Key{
		"HS256 with a public key":    {PublicKey: pemText, Algorithms: []string{"HS256"}},
		"none with a public key":     {PublicKey: pemText, Algorithms: []string{"none"}},
		"none with a secret":         {Secret: strings.Repeat("k9", 20), Algorithms: []string{"none"}},
		"RS256 with a secret":        {Secret: strings.Repeat("k9", 20), Algorithms: []string{"RS256"}},
		"HS256 with a JWKS":          {JWKSURL: idp.URL, Algorithms: []string{"HS256"}},
		"ES384 with a P-256 key":     {PublicKey: ecPEM, Algorithms: []string{"ES384"}},
		"RSA of 1024 bits":           {PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: weakDER}))},
		"a private key":              {PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}))},
		"secret and public key":      {Secret: strings.Repeat("k9", 20), PublicKey: pemText},
		"a JWKS URL that is no URL":  {JWKSURL: "jwks.json"},
		"a kid on a JWKS":            {ID: "x", JWKSURL: idp.URL},
		"a short secret":             {Secret: "short"},
		"refresh without a JWKS URL": {PublicKey: pemText, Refresh: time.Minute},
		"refresh of a second":        {JWKSURL: idp.URL, Refresh: time.Second},
	} {
		if err := k.Check(); err == nil {
			t.Errorf("%s: Check accepted it", name)
		}
	}
	if err := (relay.Key{PublicKey: ecPEM, Algorithms: []string{"ES256"}}).Check(); err != nil {
		t.Errorf("ES256 with a P-256 key: %v", err)
	}
}

// The iss and aud an app requires, and the leeway on exp and nbf.
func TestAuthIssuerAudienceLeeway(t *testing.T) {
	clk := newClock()
	idp := relaytest.StartIdP(t)
	idp.AddKey(t, "k1", "ES256")
	app := idpApp(idp)
	app.Audience = "https://api.notes.example"
	app.Leeway = 30 * time.Second
	strict := idpApp(idp)
	strict.ID, strict.APIKey = "strict", "fk_strict0123456789abcdef"
	a := newAuth(t, []relay.App{app, strict}, clk.Now)
	now := clk.Now()
	sign := func(c jwt.MapClaims) string { return idp.Sign(t, "k1", c, false) }
	base := func() jwt.MapClaims {
		return jwt.MapClaims{"iss": idp.Issuer, "sub": "ann", "aud": app.Audience, "exp": now.Add(time.Hour).Unix()}
	}
	with := func(k string, v any) string {
		c := base()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return sign(c)
	}
	for name, tc := range map[string]struct {
		tok   string
		check string
		kind  error
	}{
		"wrong iss":                  {with("iss", "https://evil.example/"), relay.CheckIssuer, relay.ErrUnauthenticated},
		"no iss":                     {with("iss", nil), relay.CheckIssuer, relay.ErrUnauthenticated},
		"wrong aud":                  {with("aud", "notes"), relay.CheckAudience, relay.ErrUnauthenticated},
		"no aud":                     {with("aud", nil), relay.CheckAudience, relay.ErrUnauthenticated},
		"wrong aud, expired too":     {sign(jwt.MapClaims{"iss": idp.Issuer, "sub": "ann", "aud": "x", "exp": now.Add(-time.Hour).Unix()}), relay.CheckAudience, relay.ErrUnauthenticated},
		"no exp":                     {with("exp", nil), relay.CheckMalformed, relay.ErrUnauthenticated},
		"no sub":                     {with("sub", nil), relay.CheckSubject, relay.ErrUnauthenticated},
		"expired past the leeway":    {with("exp", now.Add(-31*time.Second).Unix()), relay.CheckExpired, relay.ErrTokenExpired},
		"not yet, past the leeway":   {with("nbf", now.Add(31*time.Second).Unix()), relay.CheckNotYet, relay.ErrUnauthenticated},
		"unknown kid":                {withKid(t, sign(base()), "nope"), relay.CheckKey, relay.ErrUnauthenticated},
		"signature of another key":   {forge(t, sign(base())), relay.CheckSignature, relay.ErrUnauthenticated},
		"not a token":                {"not.a.token", relay.CheckMalformed, relay.ErrUnauthenticated},
		"aud in an array, wrong iss": {sign(jwt.MapClaims{"iss": "x", "sub": "ann", "aud": []string{"a", app.Audience}, "exp": now.Add(time.Hour).Unix()}), relay.CheckIssuer, relay.ErrUnauthenticated},
	} {
		_, _, err := a.Verify(app.APIKey, tc.tok)
		wantRefused(t, name, err, tc.check, tc.kind)
	}
	if _, _, err := a.Verify("fk_unknown", sign(base())); relay.RefusedCheck(err) != relay.CheckAPIKey {
		t.Errorf("unknown API key: %v", err)
	}

	// Within the leeway: 20 s past exp, 20 s before nbf, aud among several.
	late := with("exp", now.Add(-20*time.Second).Unix())
	_, c, err := a.Verify(app.APIKey, late)
	if err != nil {
		t.Fatalf("20 s past exp, 30 s leeway: %v", err)
	}
	if _, _, err := a.Verify(app.APIKey, with("nbf", now.Add(20*time.Second).Unix())); err != nil {
		t.Errorf("20 s before nbf, 30 s leeway: %v", err)
	}
	if _, _, err := a.Verify(app.APIKey, with("aud", []string{"other", app.Audience})); err != nil {
		t.Errorf("aud among several: %v", err)
	}
	// The re-check allows the same leeway, and no more.
	if err := a.Check(c, clk.Now()); err != nil {
		t.Errorf("Check within the leeway: %v", err)
	}
	if want := now.Add(-20 * time.Second).Add(30 * time.Second); !c.ValidUntil().Equal(want) {
		t.Errorf("ValidUntil = %v, want %v", c.ValidUntil(), want)
	}
	clk.Advance(10 * time.Second)
	wantRefused(t, "Check past the leeway", a.Check(c, clk.Now()), relay.CheckExpired, relay.ErrTokenExpired)

	// Without leeway, a token one second past exp is expired.
	strictTok := idp.Sign(t, "k1", jwt.MapClaims{"iss": idp.Issuer, "sub": "ann", "aud": "strict", "exp": clk.Now().Add(-time.Second).Unix()}, false)
	_, _, err = a.Verify(strict.APIKey, strictTok)
	wantRefused(t, "strict, 1 s past exp", err, relay.CheckExpired, relay.ErrTokenExpired)
}

// withKid rewrites the token's header to name kid (its signature no
// longer matches, but an unknown kid is refused before that).
func withKid(t *testing.T, tok, kid string) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	h["kid"] = kid
	nb, _ := json.Marshal(h)
	return base64.RawURLEncoding.EncodeToString(nb) + "." + parts[1] + "." + parts[2]
}

// forge flips the token's signature.
func forge(t *testing.T, tok string) string {
	t.Helper()
	i := strings.LastIndex(tok, ".")
	sig := []byte(tok[i+1:])
	if sig[2] == 'A' {
		sig[2] = 'B'
	} else {
		sig[2] = 'A'
	}
	return tok[:i+1] + string(sig)
}

// Rights from a custom claim, from fixed grants on the subject, or both.
func TestAuthGrants(t *testing.T) {
	clk := newClock()
	idp := relaytest.StartIdP(t)
	idp.AddKey(t, "k1", "EdDSA")
	ns := "https://notes.example/ferry"
	custom := idpApp(idp)
	custom.ID, custom.APIKey = "custom", "fk_custom0123456789abcdef"
	custom.Grants = relay.Grants{ReadClaim: ns + "/read", WriteClaim: ns + "/write"}
	fixed := idpApp(idp)
	fixed.ID, fixed.APIKey = "fixed", "fk_fixed0123456789abcdef"
	fixed.Grants = relay.Grants{Read: []string{"catalog"}, Write: []string{"notes-{sub}"}}
	both := idpApp(idp)
	both.ID, both.APIKey = "both", "fk_both0123456789abcdef"
	both.Grants = relay.Grants{WriteClaim: "write", Write: []string{"notes-{sub}", "{sub}"}}
	a := newAuth(t, []relay.App{custom, fixed, both}, clk.Now)
	verify := func(app relay.App, sub string, extra map[string]any) (*relay.Claims, error) {
		_, c, err := a.Verify(app.APIKey, idp.Token(t, "k1", sub, app.ID, clk.Now(), time.Hour, extra))
		return c, err
	}

	// A custom claim, as a list and as a space-separated string; Ferry's
	// own claims are not read when other names are configured.
	c, err := verify(custom, "ann", map[string]any{ns + "/read": []string{"catalog"}, ns + "/write": "notes todo", "write": []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	if !c.CanRead("catalog") || c.CanWrite("catalog") || !c.CanWrite("notes") || !c.CanWrite("todo") || c.CanWrite("other") {
		t.Errorf("custom claims: read %v write %v", c.Read, c.Write)
	}
	_, err = verify(custom, "ann", map[string]any{ns + "/write": map[string]any{"notes": true}})
	wantRefused(t, "a claim that is not a list", err, relay.CheckGrants, relay.ErrUnauthenticated)

	// Fixed grants with the subject template; the token's own claims are
	// not read (an identity provider may let users set claims).
	c, err = verify(fixed, "auth0|ann", map[string]any{"write": []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	if !c.CanWrite("notes-auth0|ann") || c.CanWrite("notes-bob") || c.CanWrite("catalog") || !c.CanRead("catalog") || c.CanWrite("anything") {
		t.Errorf("fixed grants: read %v write %v", c.Read, c.Write)
	}
	// A subject of "*" never becomes a wildcard.
	c, err = verify(both, "*", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.CanWrite("anything") || !c.CanWrite("notes-*") {
		t.Errorf("subject *: write %v", c.Write)
	}
	// Claims and fixed grants add up.
	c, err = verify(both, "bob", map[string]any{"write": []string{"shared"}})
	if err != nil {
		t.Fatal(err)
	}
	if !c.CanWrite("shared") || !c.CanWrite("notes-bob") || !c.CanWrite("bob") || c.CanWrite("notes-ann") {
		t.Errorf("both: write %v", c.Write)
	}

	bad := idpApp(idp)
	bad.Grants = relay.Grants{Write: []string{"notes-{user}"}}
	if _, err := relay.NewAuth([]relay.App{bad}, nil); err == nil {
		t.Error("a {user} placeholder was accepted")
	}
	noIss := idpApp(idp)
	noIss.Issuer = ""
	if _, err := relay.NewAuth([]relay.App{noIss}, nil); err == nil {
		t.Error("a JWKS app without an issuer was accepted")
	}
}

// Several keys are valid at once; after a Reload without one, tokens it
// signed are refused when presented and when re-checked, while sessions'
// other tokens go on.
func TestAuthRotation(t *testing.T) {
	clk := newClock()
	app := relay.NewApp("shop")
	oldKey := relay.Key{ID: "2026-10", Secret: app.Secret}
	newKey := relay.Key{ID: "2026-11", Secret: strings.Repeat("9f3a", 10)}
	app.Secret = ""
	app.Keys = []relay.Key{oldKey, newKey}
	a := newAuth(t, []relay.App{app}, clk.Now)
	mint := func(k relay.Key) string {
		tok, err := relay.IssueToken(relay.App{ID: "shop", Keys: []relay.Key{k}}, relay.TokenRequest{Subject: "ann", TTL: time.Hour, Write: []string{"*"}}, clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	_, oldClaims, err := a.Verify(app.APIKey, mint(oldKey))
	if err != nil {
		t.Fatal(err)
	}
	_, newClaims, err := a.Verify(app.APIKey, mint(newKey))
	if err != nil {
		t.Fatal(err)
	}
	changed := a.Changed()

	app.Keys = []relay.Key{newKey}
	if err := a.Reload([]relay.App{app}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Error("Changed not closed by Reload")
	}
	_, _, err = a.Verify(app.APIKey, mint(oldKey))
	wantRefused(t, "old key at hello", err, relay.CheckKey, relay.ErrUnauthenticated)
	wantRefused(t, "old key at a re-check", a.Check(oldClaims, clk.Now()), relay.CheckKeyRemoved, relay.ErrTokenExpired)
	if err := a.Check(newClaims, clk.Now()); err != nil {
		t.Errorf("new key at a re-check: %v", err)
	}

	// A bad reload changes nothing.
	if err := a.Reload([]relay.App{{ID: "shop", APIKey: app.APIKey}}); err == nil {
		t.Error("Reload accepted an app without keys")
	}
	if err := a.Check(newClaims, clk.Now()); err != nil {
		t.Errorf("after a refused reload: %v", err)
	}
	// The app removed: its sessions' tokens fail their next check.
	if err := a.Reload(nil); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, "app removed", a.Check(newClaims, clk.Now()), relay.CheckKeyRemoved, relay.ErrTokenExpired)
}

// A JWKS: an unknown kid fetches the set again, at most once per
// JWKSMinRefresh; when the URL goes down the last good set still
// verifies; a kid the provider dropped fails its next check.
func TestAuthJWKSRotationAndOutage(t *testing.T) {
	clk := newClock()
	idp := relaytest.StartIdP(t)
	idp.AddKey(t, "k1", "RS256")
	app := idpApp(idp)
	a := newAuth(t, []relay.App{app}, clk.Now)
	if n := idp.Fetches(); n != 1 {
		t.Fatalf("%d fetches at start, want 1", n)
	}
	tok := func(kid string) string { return idp.Token(t, kid, "ann", "notes", clk.Now(), time.Hour, nil) }
	_, c1, err := a.Verify(app.APIKey, tok("k1"))
	if err != nil {
		t.Fatal(err)
	}

	// The provider adds k2. Within JWKSMinRefresh of the last fetch, its
	// tokens are refused without a fetch; after it, one fetch finds k2.
	idp.AddKey(t, "k2", "ES256")
	_, _, err = a.Verify(app.APIKey, tok("k2"))
	wantRefused(t, "new kid, rate-limited", err, relay.CheckKey, relay.ErrUnauthenticated)
	if n := idp.Fetches(); n != 1 {
		t.Fatalf("%d fetches, want 1: the unknown kid was not rate-limited", n)
	}
	clk.Advance(relay.JWKSMinRefresh)
	_, c2, err := a.Verify(app.APIKey, tok("k2"))
	if err != nil {
		t.Fatalf("new kid after the wait: %v", err)
	}
	// Made-up kids do not fetch again.
	for range 5 {
		a.Verify(app.APIKey, withKid(t, tok("k1"), "made-up"))
	}
	if n := idp.Fetches(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}

	// The URL goes down: known kids still verify; a fetch prompted by an
	// unknown kid fails and keeps the set.
	idp.SetDown(true)
	clk.Advance(relay.JWKSMinRefresh)
	a.Verify(app.APIKey, withKid(t, tok("k1"), "made-up"))
	if n := idp.Fetches(); n != 3 {
		t.Fatalf("%d fetches, want 3", n)
	}
	for _, kid := range []string{"k1", "k2"} {
		if _, _, err := a.Verify(app.APIKey, tok(kid)); err != nil {
			t.Errorf("%s while the JWKS is down: %v", kid, err)
		}
	}
	if err := a.Check(c1, clk.Now()); err != nil {
		t.Errorf("re-check while the JWKS is down: %v", err)
	}

	// Back up, without k1: a fetch drops it, and its sessions' tokens
	// fail their next check.
	idp.SetDown(false)
	idp.Unpublish("k1")
	clk.Advance(relay.JWKSMinRefresh)
	a.Verify(app.APIKey, withKid(t, tok("k1"), "made-up"))
	wantRefused(t, "dropped kid at a re-check", a.Check(c1, clk.Now()), relay.CheckKeyRemoved, relay.ErrTokenExpired)
	if err := a.Check(c2, clk.Now()); err != nil {
		t.Errorf("k2 at a re-check: %v", err)
	}

	// A set with no usable key (a provider's mistake) is no key set: the
	// last good one stays.
	idp.Unpublish("k2")
	clk.Advance(relay.JWKSMinRefresh)
	a.Verify(app.APIKey, withKid(t, tok("k1"), "made-up"))
	if n := idp.Fetches(); n != 5 {
		t.Fatalf("%d fetches, want 5", n)
	}
	if err := a.Check(c2, clk.Now()); err != nil {
		t.Errorf("k2 after an empty set was served: %v", err)
	}
}

// The JWKS is down when the relay starts: it starts anyway, refuses the
// provider's tokens, and accepts them once a fetch works.
func TestAuthJWKSDownAtStart(t *testing.T) {
	clk := newClock()
	idp := relaytest.StartIdP(t)
	idp.AddKey(t, "k1", "ES384")
	idp.SetDown(true)
	var logs bytes.Buffer
	var mu sync.Mutex
	app := idpApp(idp)
	a, err := relay.NewAuthWith([]relay.App{app}, &relay.AuthOptions{Now: clk.Now, Logger: slog.New(slog.NewTextHandler(&logWriter{w: &logs, mu: &mu}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	tok := idp.Token(t, "k1", "ann", "notes", clk.Now(), time.Hour, nil)
	_, _, err = a.Verify(app.APIKey, tok)
	wantRefused(t, "JWKS down", err, relay.CheckKey, relay.ErrUnauthenticated)
	mu.Lock()
	if !strings.Contains(logs.String(), "JWKS fetch failed") {
		t.Errorf("log: %s", logs.String())
	}
	mu.Unlock()
	idp.SetDown(false)
	clk.Advance(relay.JWKSMinRefresh)
	if _, _, err := a.Verify(app.APIKey, tok); err != nil {
		t.Fatalf("after the JWKS came back: %v", err)
	}
}

type logWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *logWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// handlerTransport answers requests by calling a handler in-process, so
// that a JWKS can be fetched inside a testing/synctest bubble.
type handlerTransport struct{ h http.Handler }

func (ht handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	ht.h.ServeHTTP(rec, r)
	return rec.Result(), nil
}

// The background refresh: a set that was down at start is fetched
// JWKSMinRefresh later with no token asking; a rotation at the provider
// reaches the relay within the refresh interval; a failed refresh keeps
// the last good set and is retried JWKSMinRefresh later.
func TestAuthJWKSRefreshInterval(t *testing.T) {
	idp := relaytest.StartIdP(t)
	idp.AddKey(t, "k1", "EdDSA")
	idp.AddKey(t, "k2", "EdDSA")
	idp.Unpublish("k2")
	idp.SetDown(true)
	synctest.Test(t, func(t *testing.T) {
		app := idpApp(idp)
		app.Keys[0].Refresh = 10 * time.Minute
		a, err := relay.NewAuthWith([]relay.App{app}, &relay.AuthOptions{HTTPClient: &http.Client{Transport: handlerTransport{idp.Handler()}}})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		verify := func(kid string) (*relay.Claims, error) {
			_, c, err := a.Verify(app.APIKey, idp.Token(t, kid, "ann", "notes", time.Now(), time.Hour, nil))
			return c, err
		}
		if _, err := verify("k1"); err == nil {
			t.Fatal("verified with the JWKS down")
		}
		idp.SetDown(false)
		start := idp.Fetches()
		time.Sleep(relay.JWKSMinRefresh)
		synctest.Wait()
		if idp.Fetches() != start+1 {
			t.Fatalf("fetches %d, want %d: no retry after JWKSMinRefresh", idp.Fetches(), start+1)
		}
		c1, err := verify("k1")
		if err != nil {
			t.Fatalf("k1 after the retry: %v", err)
		}

		// The provider rotates to k2; within the interval nothing changes,
		// then one fetch brings it.
		idp.Unpublish("k1")
		idp.AddKey(t, "k2", "EdDSA")
		time.Sleep(10*time.Minute - time.Second)
		synctest.Wait()
		if err := a.Check(c1, time.Now()); err != nil {
			t.Fatalf("k1 dropped before the interval: %v", err)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		wantRefused(t, "k1 after the provider dropped it", a.Check(c1, time.Now()), relay.CheckKeyRemoved, relay.ErrTokenExpired)
		fetched := idp.Fetches()
		c2, err := verify("k2")
		if err != nil || idp.Fetches() != fetched {
			t.Fatalf("k2: %v, fetches %d -> %d (want it cached)", err, fetched, idp.Fetches())
		}

		// Down at the next refresh: k2 still holds, and the relay tries
		// again JWKSMinRefresh later rather than in 10 minutes.
		idp.SetDown(true)
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if err := a.Check(c2, time.Now()); err != nil {
			t.Fatalf("k2 with the JWKS down: %v", err)
		}
		n := idp.Fetches()
		time.Sleep(relay.JWKSMinRefresh)
		synctest.Wait()
		if idp.Fetches() != n+1 {
			t.Fatalf("fetches %d, want %d: no retry after a failed refresh", idp.Fetches(), n+1)
		}
	})
}

// Verify and Check run while Reload swaps the apps (run with -race): each
// sees one generation or the next, never a mix, and a token of the key
// every generation has is never refused.
func TestAuthReloadWhileVerifying(t *testing.T) {
	clk := newClock()
	idp := relaytest.StartIdP(t)
	idp.AddKey(t, "k1", "ES256")
	app := idpApp(idp)
	a := newAuth(t, []relay.App{app}, clk.Now)
	tok := idp.Token(t, "k1", "ann", "notes", clk.Now(), time.Hour, nil)
	_, c, err := a.Verify(app.APIKey, tok)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, _, err := a.Verify(app.APIKey, tok); err != nil {
					errs <- err
					return
				}
				if err := a.Check(c, clk.Now()); err != nil {
					errs <- err
					return
				}
				select { // wait for the next reload: no busy loop
				case <-a.Changed():
				case <-stop:
					return
				}
			}
		})
	}
	extra := relay.NewApp("other")
	for i := range 50 {
		apps := []relay.App{app}
		if i%2 == 0 {
			apps = append(apps, extra)
		}
		if err := a.Reload(apps); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("during reloads: %v", err)
	}
	if n := idp.Fetches(); n != 1 {
		t.Errorf("%d JWKS fetches: reloads refetched the set they kept", n)
	}
}

// A set whose keys have no kid (some providers publish one key so) still
// verifies, whether or not the token names a kid.
func TestAuthJWKSKeyWithoutKid(t *testing.T) {
	clk := newClock()
	idp := relaytest.StartIdP(t)
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk, err := jwkset.NewJWKFromKey(pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{ALG: jwkset.AlgEdDSA}})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(jwk.Marshal())
	idp.PublishRaw(string(raw))
	app := idpApp(idp)
	a := newAuth(t, []relay.App{app}, clk.Now)
	for _, kid := range []string{"", "some-kid"} {
		tk := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"iss": idp.Issuer, "sub": "ann", "aud": "notes", "exp": clk.Now().Add(time.Hour).Unix()})
		if kid != "" {
			tk.Header["kid"] = kid
		}
		s, err := tk.SignedString(priv)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := a.Verify(app.APIKey, s); err != nil {
			t.Errorf("kid %q: %v", kid, err)
		}
	}
}
