package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
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
