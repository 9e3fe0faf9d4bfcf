package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigGivesTheAutomergeURL(t *testing.T) {
	u, err := automergeURL("ws://127.0.0.1:8080/ws", "fk_key", "tok.en")
	if err != nil {
		t.Fatal(err)
	}
	p, _ := url.Parse(u)
	q := p.Query()
	if p.Host != "127.0.0.1:8080" || p.Path != "/automerge/todos" || q.Get("api_key") != "fk_key" || q.Get("token") != "tok.en" || q.Get("announce") != "1" {
		t.Fatalf("automerge URL %s", u)
	}

	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("<p>todo</p>"), 0o644)
	srv := httptest.NewServer(handler(dir, func(context.Context) (string, error) { return u, nil }))
	defer srv.Close()
	res, err := http.Get(srv.URL + "/config.json")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var cfg map[string]string
	if err := json.NewDecoder(res.Body).Decode(&cfg); err != nil || cfg["url"] != u {
		t.Fatalf("config.json: %v, %v", cfg, err)
	}
	if res.Header.Get("Cache-Control") != "no-store" {
		t.Fatal("config.json (it holds a token) may be cached")
	}
	if res, err := http.Get(srv.URL + "/"); err != nil || res.StatusCode != 200 {
		t.Fatalf("page: %v %v", res, err)
	}
}

// relay-check.json tells a page why its WebSocket failed: no relay, or
// the relay refusing the page's origin (what a browser hides from it).
func TestRelayCheck(t *testing.T) {
	var gotOrigin string
	relay := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotOrigin = r.Header.Get("Origin")
		if gotOrigin != "http://allowed.test" {
			http.Error(w, "origin "+gotOrigin+" is not allowed to connect to /automerge/todos", http.StatusForbidden)
			return
		}
		http.Error(w, "not a websocket upgrade", http.StatusBadRequest)
	}))
	amURL := "ws" + strings.TrimPrefix(relay.URL, "http") + "/automerge/todos?token=t"
	if c := checkRelay(context.Background(), amURL, "http://page.test"); c.State != "refused" || !strings.Contains(c.Reason, "origin http://page.test is not allowed") {
		t.Fatalf("refused origin: %+v", c)
	}
	if c := checkRelay(context.Background(), amURL, "http://allowed.test"); c.State != "reachable" {
		t.Fatalf("allowed origin: %+v", c)
	}
	relay.Close()
	if c := checkRelay(context.Background(), amURL, "http://page.test"); c.State != "offline" || !strings.Contains(c.Reason, "does not answer") {
		t.Fatalf("no relay: %+v", c)
	}

	// Through the page's server.
	dir := t.TempDir()
	srv := httptest.NewServer(handler(dir, func(context.Context) (string, error) { return amURL, nil }))
	defer srv.Close()
	res, err := http.Get(srv.URL + "/relay-check.json")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var c relayCheck
	if err := json.NewDecoder(res.Body).Decode(&c); err != nil || c.State != "offline" {
		t.Fatalf("relay-check.json: %+v, %v", c, err)
	}
}
