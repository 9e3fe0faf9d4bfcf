package relay

import (
	"errors"
	"net/url"
	"testing"
)

func TestOriginSchemeMatters(t *testing.T) {
	allowed := []string{"app.example.com", "*.example.org", "localhost:*", "http://legacy.example.net", "127.0.0.1:*"}
	for _, c := range []struct {
		origin string
		ok     bool
	}{
		{"https://app.example.com", true},
		// A host pattern admits https only: a plain-http page can be
		// rewritten on its way and would carry the visitor's cookie.
		{"http://app.example.com", false},
		{"https://a.example.org", true},
		{"http://a.example.org", false},
		{"http://localhost:5173", true},
		{"https://localhost:5173", true},
		{"http://127.0.0.1:3000", true},
		{"http://legacy.example.net", true},
		{"https://legacy.example.net", false},
		{"https://evil.example.com", false},
		{"https://app.example.com.evil.net", false},
		{"ws://app.example.com", false},
	} {
		u, err := url.Parse(c.origin)
		if err != nil {
			t.Fatal(err)
		}
		if got := originAllowed(u, allowed); got != c.ok {
			t.Errorf("origin %s: allowed %v, want %v", c.origin, got, c.ok)
		}
	}
}

func TestOriginPatternsThatMatchEverySiteAreRefused(t *testing.T) {
	for _, p := range []string{"*", "*.*", "https://*", "http://*", "*:*", "*://*", "HTTPS://*.*"} {
		err := checkOriginPatterns([]string{"app.example.com", p})
		if !errors.Is(err, ErrOriginPattern) {
			t.Errorf("pattern %q: err %v, want ErrOriginPattern", p, err)
		}
	}
	for _, p := range []string{"app.example.com", "*.example.com", "localhost:*", "127.0.0.1:*", "[::1]:*", "https://*.example.org", "http://localhost:5173"} {
		if err := checkOriginPatterns([]string{p}); err != nil {
			t.Errorf("pattern %q refused: %v", p, err)
		}
	}
	if err := checkOriginPatterns([]string{"[bad"}); err == nil {
		t.Error("a malformed pattern was accepted")
	}
	auth, err := NewAuth([]App{NewApp("shop")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The patterns are checked before the store is used.
	var unused struct{ Store }
	_, err = NewServer(&Options{Store: unused, Auth: auth, AllowedOrigins: []string{"*"}})
	if !errors.Is(err, ErrOriginPattern) {
		t.Errorf("NewServer with \"*\": %v, want ErrOriginPattern", err)
	}
}
