package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"

	"github.com/ferrysync/ferry/relay"
)

// TestNodeClients runs test/node with the real automerge-repo in Node:
// create, find, live edits both ways with a Go replica, ephemeral
// messages, unknown documents, auth refusals, read-only tokens, and
// catching up after the relay restarts.
func TestNodeClients(t *testing.T) {
	requireNode(t)
	h := newHarness(t)
	// --test-force-exit: an adapter whose reconnect timer fires after
	// Repo.shutdown opens a new socket and would keep node running.
	runNode(t, h.env(h.control()), "--test", "--test-force-exit", "--test-reporter=spec", "test/node/relay.test.mjs")
}

// TestBrowserPage opens the example page in headless Chromium: an item
// added on the page reaches a Go replica, a Go edit shows on the page, and
// after a reload with the relay stopped the items are still there
// (IndexedDB) and the page catches up once the relay is back. The page's
// connection state is checked throughout (connected, offline, refused
// for its origin or its token), and which tasks the relay lacks.
func TestBrowserPage(t *testing.T) {
	requireNode(t)
	if _, err := os.Stat("/usr/bin/chromium"); err != nil {
		skipJS(t, "/usr/bin/chromium is missing (apt-get install chromium)")
	}
	if out, err := exec.Command("npm", "run", "build").CombinedOutput(); err != nil {
		t.Fatalf("npm run build: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	page := ln.Addr().String()
	h := newHarness(t, page)
	// The page test turns badToken on to see the page refused for its
	// token (POST /test/bad-token?on=1 on the page's server).
	var badToken atomic.Bool
	cfg := func(context.Context) (string, error) {
		tok := h.token(relay.TokenRequest{Write: []string{collection}})
		if badToken.Load() {
			tok = "not-a-token"
		}
		return automergeURL("ws://"+h.addr+"/ws", h.app.APIKey, tok)
	}
	mux := http.NewServeMux()
	mux.Handle("/", handler("static", cfg))
	mux.HandleFunc("POST /test/bad-token", func(w http.ResponseWriter, r *http.Request) {
		badToken.Store(r.URL.Query().Get("on") == "1")
	})
	hs := &http.Server{Handler: mux}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	env := append(h.env(h.control()), "FERRY_PAGE_URL=http://"+page+"/")
	if shot := os.Getenv("FERRY_SCREENSHOT"); shot != "" {
		env = append(env, "FERRY_SCREENSHOT="+shot)
	}
	runNode(t, env, "--test", "--test-force-exit", "--test-reporter=spec", "test/browser/page.test.mjs")
}
