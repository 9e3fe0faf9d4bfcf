package relay

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestAuth(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	shop, other := NewApp("shop"), NewApp("other")
	a, err := NewAuth([]App{shop, other}, clock)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := IssueToken(shop, TokenRequest{Subject: "ann", TTL: time.Hour, Read: []string{"catalog"}, Write: []string{"orders"}}, now)
	if err != nil {
		t.Fatal(err)
	}
	app, c, err := a.Verify(shop.APIKey, tok)
	if err != nil || app.ID != "shop" || c.Subject != "ann" {
		t.Fatalf("Verify = %v %v %v", app, c, err)
	}
	if !c.CanRead("catalog") || !c.CanRead("orders") || c.CanWrite("catalog") || !c.CanWrite("orders") || c.CanRead("secrets") {
		t.Fatalf("rights wrong: %+v", c)
	}

	otherTok, _ := IssueToken(other, TokenRequest{Subject: "eve", TTL: time.Hour, Write: []string{"*"}}, now)
	forged := tok[:strings.LastIndex(tok, ".")+1] + "AAAA" + tok[strings.LastIndex(tok, ".")+5:]
	noneAlg := "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJldmUiLCJhdWQiOlsic2hvcCJdLCJleHAiOjQxMDI0NDQ4MDAsIndyaXRlIjpbIioiXX0."
	for name, tc := range map[string]struct {
		key, tok string
		want     error
	}{
		"unknown API key":        {"nope", tok, ErrUnauthenticated},
		"other app's token":      {shop.APIKey, otherTok, ErrUnauthenticated},
		"forged signature":       {shop.APIKey, forged, ErrUnauthenticated},
		"alg none":               {shop.APIKey, noneAlg, ErrUnauthenticated},
		"garbage":                {shop.APIKey, "not.a.token", ErrUnauthenticated},
		"empty":                  {shop.APIKey, "", ErrUnauthenticated},
		"right token, wrong key": {other.APIKey, tok, ErrUnauthenticated},
	} {
		if _, _, err := a.Verify(tc.key, tc.tok); !errors.Is(err, tc.want) {
			t.Errorf("%s: Verify = %v, want %v", name, err, tc.want)
		}
	}

	now = now.Add(2 * time.Hour)
	if _, _, err := a.Verify(shop.APIKey, tok); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("expired token: %v", err)
	}
}

func TestNewAuthRejectsBadApps(t *testing.T) {
	ok := NewApp("a")
	for name, apps := range map[string][]App{
		"short secret": {{ID: "a", APIKey: "k", Secret: "short"}},
		"dup key":      {ok, {ID: "b", APIKey: ok.APIKey, Secret: ok.Secret}},
		"dup id":       {ok, NewApp("a")},
		"no key":       {{ID: "a", Secret: ok.Secret}},
	} {
		if _, err := NewAuth(apps, nil); err == nil {
			t.Errorf("%s: NewAuth accepted %v", name, apps)
		}
	}
}

// A token is good until its expiry and expired from that instant on; one
// without an expiry never expires.
func TestClaimsExpired(t *testing.T) {
	exp := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	c := &Claims{}
	if c.Expired(exp.Add(100 * 365 * 24 * time.Hour)) {
		t.Fatal("a token without an expiry expired")
	}
	c.ExpiresAt = jwt.NewNumericDate(exp)
	for _, tc := range []struct {
		now  time.Time
		want bool
	}{{exp.Add(-time.Second), false}, {exp, true}, {exp.Add(time.Second), true}} {
		if got := c.Expired(tc.now); got != tc.want {
			t.Errorf("Expired(%v) with expiry %v = %v, want %v", tc.now, exp, got, tc.want)
		}
	}
}
