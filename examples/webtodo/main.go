// Webtodo serves a to-do page built on automerge-repo (JavaScript) that
// syncs through Ferry's relay with the Go to-do example: both edit the
// records of the "todos" collection. The page keeps its tasks in
// IndexedDB, so it works offline and catches up when the relay is back,
// and shows its connection to the relay and the tasks the relay lacks.
// README.md says more.
//
//	go run ./cmd/ferry relay --dev                 # in another terminal
//	(cd examples/webtodo && npm ci && npm run build)
//	go run ./examples/webtodo                      # open http://127.0.0.1:8090
//	go run ./examples/todo --data alice add "buy milk"
//	go run ./examples/todo --data alice sync       # the task shows on the page
//
// The page gets the relay's automerge-repo URL, with an API key and a
// token, from this server's /config.json; `ferry relay --dev` allows pages
// on localhost to connect.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrysync/ferry/examples/internal/devrelay"
	"github.com/ferrysync/ferry/internal/explain"
)

const collection = "todos"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, nil)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
	case err != nil:
		fmt.Fprintln(os.Stderr, "webtodo:", explain.Error(err))
		os.Exit(1)
	}
}

// run serves until ctx ends. If ready is not nil it receives the address
// once the server listens.
func run(ctx context.Context, args []string, stdout io.Writer, ready chan<- string) error {
	fs := flag.NewFlagSet("webtodo", flag.ContinueOnError)
	fs.SetOutput(stdout)
	var rf devrelay.Flags
	rf.Register(fs)
	addr := fs.String("addr", "127.0.0.1:8090", "address to serve the page on")
	static := fs.String("static", defaultStatic(), "folder with index.html and the built app.js (npm run build)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	creds, err := rf.Credentials()
	if err != nil {
		return err
	}
	cfg := func(ctx context.Context) (string, error) {
		tok, err := creds.Tokens(ctx, "")
		if err != nil {
			return "", err
		}
		return automergeURL(creds.URL, creds.APIKey, tok)
	}
	if _, err := os.Stat(filepath.Join(*static, "app.js")); err != nil {
		return fmt.Errorf("%s has no app.js: build it with `npm ci && npm run build` in examples/webtodo", *static)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: handler(*static, cfg), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	fmt.Fprintf(stdout, "webtodo: open http://%s (relay %s)\n", ln.Addr(), creds.URL)
	if ready != nil {
		ready <- ln.Addr().String()
	}
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return hs.Shutdown(sctx)
}

// defaultStatic finds the page whether run from the repository's root or
// from this folder.
func defaultStatic() string {
	for _, d := range []string{"static", filepath.Join("examples", "webtodo", "static")} {
		if _, err := os.Stat(filepath.Join(d, "index.html")); err == nil {
			return d
		}
	}
	return "static"
}

// handler serves the page's files and /config.json, the relay URL the
// page connects to.
func handler(static string, cfg func(context.Context) (string, error)) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", http.FileServer(http.Dir(static)))
	mux.HandleFunc("/config.json", func(w http.ResponseWriter, r *http.Request) {
		u, err := cfg(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(map[string]string{"url": u})
	})
	mux.HandleFunc("/relay-check.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		u, err := cfg(r.Context())
		if err != nil {
			json.NewEncoder(w).Encode(relayCheck{State: "unknown", Reason: err.Error()})
			return
		}
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		json.NewEncoder(w).Encode(checkRelay(r.Context(), u, scheme+"://"+r.Host))
	})
	return mux
}

// relayCheck is /relay-check.json: why the page's WebSocket to the relay
// failed, as far as this server can tell. A browser shows a page nothing
// of a refused WebSocket upgrade (no status, no body), so the page asks.
type relayCheck struct {
	State  string `json:"state"` // "offline", "refused" or "reachable"
	Reason string `json:"reason,omitempty"`
}

// checkRelay asks the relay's automerge-repo endpoint at amURL what it
// answers a page from origin: no answer (offline), a refusal of the origin
// (HTTP 403, with the relay's explanation), or anything else (reachable:
// the WebSocket failed for another reason).
func checkRelay(ctx context.Context, amURL, origin string) relayCheck {
	u, err := url.Parse(amURL)
	if err != nil {
		return relayCheck{State: "unknown", Reason: err.Error()}
	}
	u.Scheme = strings.Replace(u.Scheme, "ws", "http", 1) // ws, wss
	host := u.Host
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return relayCheck{State: "unknown", Reason: err.Error()}
	}
	req.Header.Set("Origin", origin)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return relayCheck{State: "offline", Reason: "the relay at " + host + " does not answer"}
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusForbidden {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 1024))
		return relayCheck{State: "refused", Reason: strings.TrimSpace(string(b))}
	}
	return relayCheck{State: "reachable"}
}

// automergeURL turns the relay's device URL (ws://HOST/ws) into the URL of
// its automerge-repo endpoint for the todos collection. announce=1 asks the
// relay to send every task, as the page lists them all.
func automergeURL(relayURL, apiKey, token string) (string, error) {
	u, err := url.Parse(relayURL)
	if err != nil {
		return "", err
	}
	u.Path = strings.TrimSuffix(u.Path, "/ws") + "/automerge/" + collection
	u.RawQuery = url.Values{"api_key": {apiKey}, "token": {token}, "announce": {"1"}}.Encode()
	return u.String(), nil
}
