package relay

import (
	"bytes"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"
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

// A refused page retries every second per tab: the relay warns once a
// minute per origin, and the next warning counts the refusals between.
func TestRefusedOriginWarnsOncePerMinute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logged bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logged, nil))
		refuse := func(origin string) {
			r := httptest.NewRequest("GET", "http://relay.test/automerge/todos", nil)
			r.Header.Set("Origin", origin)
			w := httptest.NewRecorder()
			if checkOrigin(w, r, []string{"app.example.com"}, log) || w.Code != http.StatusForbidden {
				t.Fatalf("origin %s was not refused (%d)", origin, w.Code)
			}
		}
		for range 30 {
			refuse("https://evil.example.net")
			time.Sleep(time.Second)
		}
		refuse("https://other.example.net") // another origin has its own
		if n := strings.Count(logged.String(), "level=WARN"); n != 2 {
			t.Fatalf("%d warnings in 30 s, want one per origin:\n%s", n, logged.String())
		}
		time.Sleep(31 * time.Second)
		refuse("https://evil.example.net")
		lines := strings.Split(strings.TrimSpace(logged.String()), "\n")
		if len(lines) != 3 || !strings.Contains(lines[2], "origin=https://evil.example.net") || !strings.Contains(lines[2], "refused_since_last_warning=29") {
			t.Fatalf("after a minute:\n%s", logged.String())
		}
	})
}

func TestWarnLimiterIsBounded(t *testing.T) {
	l := &warnLimiter{every: time.Minute, last: map[warnKey]warnState{}}
	now := time.Now()
	for i := range 3 * maxWarnKeys {
		if _, ok := l.allow(nil, strconv.Itoa(i), now); !ok {
			t.Fatalf("a new origin (%d) was not warned about", i)
		}
		if len(l.last) > maxWarnKeys {
			t.Fatalf("%d origins remembered, bound %d", len(l.last), maxWarnKeys)
		}
	}
}
