package main

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/amrepo"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/relaytest"
	"github.com/ferrysync/ferry/transport"
)

// busyStore holds every Append until release is closed, as a store
// stalled on a slow disk would. The relay finishes an append it has begun
// whatever happens (it passes no cancelable context), so the session
// pushing stays busy until the test lets the append through. A push, not
// a stuck pull: any other request holds a session mutex that Shutdown
// waits on, and a bubble's clock does not move past a goroutine blocked
// on a mutex.
type busyStore struct {
	*memstore.Store
	entered chan struct{}
	release chan struct{}
	busy    atomic.Int32 // appends in progress
	closed  atomic.Bool
	early   atomic.Bool // closed while an append was still in progress
}

func (s *busyStore) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	s.busy.Add(1)
	defer s.busy.Add(-1)
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-s.release
	return s.Store.Append(ctx, c, fence, now, entries)
}

func (s *busyStore) Close() error {
	if s.busy.Load() != 0 {
		s.early.Store(true)
	}
	s.closed.Store(true)
	return s.Store.Close()
}

// On SIGTERM the relay waits shutdown_timeout for busy sessions, not
// longer and not less, then cuts them off and says so; the store is closed
// once nothing uses it (docs/operations.md). shutdownRelay runs as Run
// calls it, with the grace configure reads from the file, over serveHTTP
// on an in-memory network, in a synctest bubble: the seconds are fake.
func TestRelayShutdownTimeoutCutsBusySessions(t *testing.T) {
	dir := t.TempDir()
	// The documented default, when the file says nothing.
	cfg, _, err := (&RelayCommand{}).configure([]string{"--dev", "--data", dir})
	if err != nil {
		t.Fatal(err)
	}
	if got := time.Duration(cfg.ShutdownTimeout); got != 30*time.Second {
		t.Errorf("default shutdown_timeout %v, want 30s", got)
	}
	path, app := testConfigWith(t, dir, func(c *Config) { c.ShutdownTimeout = Duration(3 * time.Second) })
	if cfg, _, err = (&RelayCommand{}).configure([]string{"--config", path}); err != nil {
		t.Fatal(err)
	}
	grace := time.Duration(cfg.ShutdownTimeout)
	if grace != 3*time.Second {
		t.Fatalf("shutdown_timeout read as %v, want 3s", grace)
	}

	synctest.Test(t, func(t *testing.T) {
		logs := &syncBuffer{}
		log, err := newLogger("info", "text", logs)
		if err != nil {
			t.Fatal(err)
		}
		st := &busyStore{Store: memstore.New(), entered: make(chan struct{}, 1), release: make(chan struct{})}
		var releaseOnce sync.Once
		release := func() { releaseOnce.Do(func() { close(st.release) }) }
		auth, err := relay.NewAuth([]relay.App{app}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer auth.Close()
		srv, err := relay.NewServer(&relay.Options{Store: st, Auth: auth, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		if err := amrepo.Mount(srv, nil); err != nil {
			t.Fatal(err)
		}
		ln, dial := relaytest.PipeNetwork()
		hs, served, _ := serveHTTP(srv.Handler(), ln, nil)

		// A device whose push is stuck in the store's append.
		tr := &http.Transport{DialContext: dial}
		defer tr.CloseIdleConnections()
		conn, err := transport.Dial(context.Background(), "ws://relay.test/ws",
			&transport.Options{PingInterval: -1, Dial: &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}}})
		if err != nil {
			t.Fatal(err)
		}
		c := transport.NewClient(conn, nil)
		defer c.Close()
		tok, err := relay.IssueToken(app, relay.TokenRequest{Subject: "ann", TTL: time.Hour, Write: []string{"*"}}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		hello := &transport.Hello{APIKey: app.APIKey, Token: tok, ReplicaID: "r", Versions: transport.SupportedVersions()}
		if err := c.Call(context.Background(), hello, &transport.Welcome{}); err != nil {
			t.Fatal(err)
		}
		d, err := crdt.New("ab")
		if err != nil {
			t.Fatal(err)
		}
		d.Put(map[string]any{"v": 1})
		d.Commit("", time.Time{})
		data, err := d.ChangesSince(nil)
		if err != nil {
			t.Fatal(err)
		}
		pushErr := make(chan error, 1)
		go func() {
			push := &transport.Push{Collection: "c", Records: []transport.RecordChanges{{Record: "r1", Data: data}}}
			pushErr <- c.Call(context.Background(), push, &transport.Ack{})
		}()
		<-st.entered

		start := time.Now()
		var shutErr error
		stopped := make(chan struct{})
		go func() {
			shutErr = shutdownRelay(log, srv, hs, st, grace)
			close(stopped)
		}()
		// Should shutdownRelay never give up, this lets the bubble end so
		// that the failure is reported.
		t.Cleanup(func() { release(); srv.Close(); <-stopped })

		time.Sleep(grace - time.Nanosecond)
		synctest.Wait()
		select {
		case <-stopped:
			t.Fatalf("shutdownRelay returned %v after %v, before shutdown_timeout %v", shutErr, time.Since(start), grace)
		default:
		}
		if strings.Contains(logs.String(), "did not end in time") {
			t.Fatalf("cut-off logged %v after SIGTERM, before shutdown_timeout %v:\n%s", time.Since(start), grace, logs)
		}
		if st.closed.Load() {
			t.Fatal("store closed while a session was busy, before shutdown_timeout")
		}

		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if !strings.Contains(logs.String(), "sessions did not end in time; cutting them off") {
			t.Fatalf("no cut-off logged %v after SIGTERM, shutdown_timeout %v:\n%s", time.Since(start), grace, logs)
		}
		// Cut off: the device learns the relay is going, its push
		// unacknowledged, though the append goes on.
		select {
		case err := <-pushErr:
			if !errors.Is(err, transport.ErrShuttingDown) {
				t.Errorf("push ended with %v, want shutting_down", err)
			}
		default:
			t.Error("the busy session was not cut off at shutdown_timeout")
		}
		if st.closed.Load() {
			t.Fatal("store closed while an append was in progress")
		}

		// The append completes; only then is the store closed.
		release()
		synctest.Wait()
		select {
		case <-stopped:
		default:
			t.Fatal("shutdownRelay still waiting once the append was done")
		}
		if shutErr != nil {
			t.Fatalf("shutdownRelay: %v", shutErr)
		}
		if !st.closed.Load() || st.early.Load() {
			t.Errorf("store closed %v, during the append %v; want closed after it", st.closed.Load(), st.early.Load())
		}
		if !strings.Contains(logs.String(), "relay stopped") {
			t.Errorf("log lacks the stop:\n%s", logs)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("HTTP server ended with %v", err)
		}
	})
}
