package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/amrepo"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/replica"
)

// The JavaScript tests run the real, pinned automerge-repo (Node, and
// Chromium for the page) against a relay started here, in process, beside
// a Go replica they drive through a small HTTP control API. Without Node
// they are skipped, unless FERRY_REQUIRE_JS=1 (CI sets it).

// otherCollection is a second collection the replica syncs, for the tests
// of one Repo syncing several collections.
const otherCollection = "notes"

// cloudCollection is synced by the profile "cloud", whose policy is
// prefer-cloud (the profile "relay" prefers local values).
const cloudCollection = "cloudy"

// Task is the Go example's record (examples/todo).
type Task struct {
	Title string `ferry:"title"`
	Done  bool   `ferry:"done"`
}

var npmOnce struct {
	sync.Once
	err error
	out []byte // npm ci's output, when it failed
}

// requireNode returns node's path after making sure node_modules is
// installed (npm ci), or skips the test.
func requireNode(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		skipJS(t, "node is not installed")
	}
	if _, err := exec.LookPath("npm"); err != nil {
		skipJS(t, "npm is not installed")
	}
	npmOnce.Do(func() {
		if _, err := os.Stat("node_modules/@automerge/automerge-repo/package.json"); err == nil {
			return
		}
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		out, err := cmd.CombinedOutput()
		if err != nil {
			npmOnce.err, npmOnce.out = fmt.Errorf("npm ci: %v", err), out
		}
	})
	if npmOnce.err != nil {
		// Most often the npm registry is out of reach (offline, a
		// firewall): the pinned packages cannot be installed, which makes
		// these tests as impossible as a missing node does.
		t.Logf("npm ci's output:\n%s", npmOnce.out)
		skipJS(t, fmt.Sprintf("the JavaScript packages could not be installed (is the npm registry reachable?): %v", npmOnce.err))
	}
	return node
}

// skipJS skips the test with why, or fails it under FERRY_REQUIRE_JS=1,
// which CI sets so that nothing is skipped there.
func skipJS(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("FERRY_REQUIRE_JS") == "1" {
		t.Fatal("FERRY_REQUIRE_JS=1 but " + why)
	}
	t.Skip(why + " (set FERRY_REQUIRE_JS=1 to fail instead)")
}

// runNode runs a node command in this folder with env, logging its output,
// and fails the test if it fails.
func runNode(t *testing.T, env []string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, requireNode(t), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	t.Logf("node %s:\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("node %s: %v", strings.Join(args, " "), err)
	}
}

// harness is a relay that can be stopped and started again on the same
// address and store, the app's credentials, and a Go replica.
type harness struct {
	t       *testing.T
	app     relay.App
	auth    *relay.Auth
	store   relay.Store
	origins []string

	mu   sync.Mutex
	addr string
	srv  *relay.Server
	hs   *http.Server

	rep   *replica.Replica
	todos *replica.Collection
	live  *replica.Replica // guarded by mu; see liveReplica
}

func newHarness(t *testing.T, origins ...string) *harness {
	t.Helper()
	app := relay.NewApp("web")
	auth, err := relay.NewAuth([]relay.App{app}, nil)
	if err != nil {
		t.Fatal(err)
	}
	store, err := badgerstore.Open(filepath.Join(t.TempDir(), "relay"), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, app: app, auth: auth, store: store, origins: origins}
	if err := h.startRelay(); err != nil {
		t.Fatal(err)
	}
	h.rep, err = replica.Open("", &replica.Options{InMemory: true, TokenSource: replica.StaticToken(h.token(relay.TokenRequest{Write: []string{"*"}}))})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.rep.AddProfile(replica.Profile{Name: "relay", URL: "ws://" + h.addr + "/ws", APIKey: app.APIKey,
		Mode: policy.Manual, Type: policy.TwoWay, Collections: []string{collection, otherCollection}}); err != nil {
		t.Fatal(err)
	}
	if err := h.rep.AddProfile(replica.Profile{Name: "cloud", URL: "ws://" + h.addr + "/ws", APIKey: app.APIKey,
		Mode: policy.Manual, Type: policy.TwoWay, Collections: []string{cloudCollection}, Policy: policy.PreferCloud}); err != nil {
		t.Fatal(err)
	}
	h.todos = h.rep.Collection(collection)
	t.Cleanup(func() {
		h.rep.Close()
		h.stopRelay()
		store.Close()
	})
	return h
}

// liveReplica returns a replica with a live profile on the collection,
// opened at the first call.
func (h *harness) liveReplica() *replica.Replica {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.live != nil {
		return h.live
	}
	live, err := replica.Open("", &replica.Options{InMemory: true, TokenSource: replica.StaticToken(h.token(relay.TokenRequest{Write: []string{"*"}})),
		BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond})
	if err != nil {
		h.t.Fatal(err)
	}
	if err := live.AddProfile(replica.Profile{Name: "live", URL: "ws://" + h.addr + "/ws", APIKey: h.app.APIKey,
		Mode: policy.Live, Type: policy.TwoWay, Collections: []string{collection}}); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { live.Close() })
	h.live = live
	return live
}

func (h *harness) token(req relay.TokenRequest) string {
	if req.Subject == "" {
		req.Subject = "tester"
	}
	if req.TTL == 0 {
		req.TTL = time.Hour
	}
	tok, err := relay.IssueToken(h.app, req, time.Now())
	if err != nil {
		h.t.Fatal(err)
	}
	return tok
}

func (h *harness) startRelay() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.srv != nil {
		return nil
	}
	addr := h.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv, err := relay.NewServer(&relay.Options{Store: h.store, Auth: h.auth, AllowedOrigins: h.origins})
	if err == nil {
		if err = amrepo.Mount(srv, nil); err != nil {
			srv.Close()
		}
	}
	if err != nil {
		ln.Close()
		return err
	}
	if h.addr == "" {
		// Set once, at the first start, before anything reads it
		// concurrently; restarts listen on the same address.
		h.addr = ln.Addr().String()
	}
	h.srv = srv
	h.hs = &http.Server{Handler: srv.Handler()}
	go h.hs.Serve(ln)
	return nil
}

func (h *harness) stopRelay() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h.srv.Shutdown(ctx)
	h.hs.Close()
	h.srv, h.hs = nil, nil
}

// env is what the JavaScript tests read: the relay's automerge-repo base
// URL, credentials, and the control API's address.
func (h *harness) env(control string) []string {
	return []string{
		"FERRY_AM_URL=ws://" + h.addr + "/automerge",
		"FERRY_API_KEY=" + h.app.APIKey,
		"FERRY_TOKEN=" + h.token(relay.TokenRequest{Write: []string{"*"}}),
		"FERRY_RO_TOKEN=" + h.token(relay.TokenRequest{Read: []string{collection}}),
		"FERRY_OTHER_TOKEN=" + h.token(relay.TokenRequest{Read: []string{"elsewhere"}}),
		"FERRY_CONTROL=" + control,
	}
}

// control serves the API the JavaScript tests drive the Go side with. Each
// call that reads or writes the replica syncs it with the relay.
func (h *harness) control() string {
	mux := http.NewServeMux()
	// Each call syncs the profile "relay", or the one its query names.
	sync := func(r *http.Request) error {
		profile := r.URL.Query().Get("profile")
		if profile == "" {
			profile = "relay"
		}
		_, err := h.rep.Sync(r.Context(), profile)
		return err
	}
	coll := func(r *http.Request) *replica.Collection {
		if name := r.URL.Query().Get("coll"); name != "" {
			return h.rep.Collection(name)
		}
		return h.todos
	}
	reply := func(w http.ResponseWriter, v any, err error) {
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("POST /put", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		done, _ := strconv.ParseBool(q.Get("done"))
		err := coll(r).Put(q.Get("id"), Task{Title: q.Get("title"), Done: done})
		if err == nil && q.Get("sync") != "0" { // sync=0 leaves the edit pending
			err = sync(r)
		}
		reply(w, map[string]bool{"ok": true}, err)
	})
	mux.HandleFunc("POST /delete", func(w http.ResponseWriter, r *http.Request) {
		err := h.todos.Delete(r.URL.Query().Get("id"))
		if err == nil {
			err = sync(r)
		}
		reply(w, map[string]bool{"ok": true}, err)
	})
	mux.HandleFunc("GET /get", func(w http.ResponseWriter, r *http.Request) {
		if err := sync(r); err != nil {
			reply(w, nil, err)
			return
		}
		id := r.URL.Query().Get("id")
		coll := coll(r)
		var task Task
		err := coll.Get(id, &task)
		res := map[string]any{"found": err == nil, "title": task.Title, "done": task.Done, "deleted": false}
		if errors.Is(err, replica.ErrNotFound) {
			_, herr := coll.Heads(id)
			res["deleted"], err = herr == nil, nil
		}
		reply(w, res, err)
	})
	mux.HandleFunc("GET /find", func(w http.ResponseWriter, r *http.Request) {
		if err := sync(r); err != nil {
			reply(w, nil, err)
			return
		}
		res := map[string]any{"found": false}
		var err error
		for rec, rerr := range h.todos.Scan(replica.ScanOptions{}) {
			var task Task
			if err = rerr; err == nil && rec.Decode(&task) == nil && task.Title == r.URL.Query().Get("title") {
				res = map[string]any{"found": true, "id": rec.ID, "title": task.Title, "done": task.Done}
			}
		}
		reply(w, res, err)
	})
	// Presence goes through a second replica, live on the collection.
	mux.HandleFunc("POST /presence/set", func(w http.ResponseWriter, r *http.Request) {
		live := h.liveReplica()
		err := live.Collection(collection).SetPresence(r.URL.Query().Get("id"), map[string]any{"user": r.URL.Query().Get("user")})
		reply(w, map[string]string{"peer": live.ID()}, err)
	})
	mux.HandleFunc("GET /presence/peers", func(w http.ResponseWriter, r *http.Request) {
		peers := map[string]any{}
		for _, p := range h.liveReplica().Collection(collection).Peers(r.URL.Query().Get("id")) {
			peers[p.ID] = p.State
		}
		reply(w, peers, nil)
	})
	mux.HandleFunc("POST /relay/stop", func(w http.ResponseWriter, r *http.Request) {
		h.stopRelay()
		reply(w, map[string]bool{"ok": true}, nil)
	})
	mux.HandleFunc("POST /relay/start", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]bool{"ok": true}, h.startRelay())
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	hs := &http.Server{Handler: mux}
	go hs.Serve(ln)
	h.t.Cleanup(func() { hs.Close() })
	return "http://" + ln.Addr().String()
}
