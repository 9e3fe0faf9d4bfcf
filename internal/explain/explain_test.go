package explain

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/transport"
)

// hello says hello to url and returns the error, wrapped as a caller
// would.
func hello(t *testing.T, url string, o *transport.Options, apiKey, token string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := transport.Dial(ctx, url, o)
	if err != nil {
		return fmt.Errorf("sync with %s: ferry: connect to %s: %w", url, url, err)
	}
	c := transport.NewClient(conn, nil)
	defer c.Close()
	err = c.Call(ctx, &transport.Hello{APIKey: apiKey, Token: token, ReplicaID: "r", Versions: transport.SupportedVersions()}, &transport.Welcome{})
	if err != nil {
		return fmt.Errorf("sync with %s: %w", url, fmt.Errorf("ferry: hello to %s: %w", url, err))
	}
	return nil
}

func newRelay(t *testing.T) (url string, app relay.App) {
	app = relay.NewApp("shop")
	auth, err := relay.NewAuth([]relay.App{app}, nil)
	if err != nil {
		t.Fatal(err)
	}
	store := memstore.New()
	srv, err := relay.NewServer(&relay.Options{Store: store, Auth: auth, PingInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		hs.Close()
		store.Close()
	})
	return "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws", app
}

func TestUnknownAPIKey(t *testing.T) {
	url, _ := newRelay(t)
	err := hello(t, url, nil, "fk_wrong", "x")
	if !errors.Is(err, transport.ErrUnauthenticated) || !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("the chain lost its sentinels: %v", err)
	}
	want := "sync with " + url + ": the relay refused the API key or token: unknown API key"
	if got := Error(err); got != want {
		t.Fatalf("rendered\n  %s\nwant\n  %s\n(the chain: %v)", got, want, err)
	}
}

func TestExpiredToken(t *testing.T) {
	url, app := newRelay(t)
	tok, err := relay.IssueToken(app, relay.TokenRequest{Subject: "ann", TTL: time.Second}, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	got := Error(hello(t, url, nil, app.APIKey, tok))
	if !strings.HasPrefix(got, "sync with "+url+": the access token has expired; get a fresh one") || strings.Count(got, "expired") > 2 {
		t.Fatalf("rendered %q", got)
	}
}

func TestConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	url := "ws://" + addr + "/ws"
	got := Error(hello(t, url, nil, "k", "t"))
	want := "sync with " + url + ": connect to " + url + ": nothing accepts connections at " + addr + ": is the relay running, and is that its address?"
	if got != want {
		t.Fatalf("rendered\n  %s\nwant\n  %s", got, want)
	}
}

func TestUntrustedCertificate(t *testing.T) {
	url, _ := newRelay(t)
	hs := httptest.NewTLSServer(nil)
	defer hs.Close()
	url = "wss" + strings.TrimPrefix(hs.URL, "https") + "/ws"
	got := Error(hello(t, url, nil, "k", "t"))
	if !strings.HasSuffix(got, "the relay's TLS certificate is not trusted: it is signed by an authority this machine does not know") {
		t.Fatalf("rendered %q", got)
	}
}

func TestLocked(t *testing.T) {
	dir := t.TempDir()
	o := badger.DefaultOptions(dir).WithLogger(nil)
	db, err := badgerdir.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, err = badgerdir.Open(o)
	err = fmt.Errorf("backup: %w", fmt.Errorf("relay: open store %s: %w", dir, err))
	want := "backup: relay: open store " + dir + ": the store is in use by another process (a running relay or app, or a ferry command): stop it, then try again"
	if got := Error(err); got != want {
		t.Fatalf("rendered\n  %s\nwant\n  %s", got, want)
	}
}

// A malformed token: one sentence with the cause, none of the layers'
// repetitions (transport: unauthenticated: relay: unauthenticated:) nor the
// WebSocket close frame that followed the refusal.
func TestMalformedToken(t *testing.T) {
	url, app := newRelay(t)
	err := hello(t, url, nil, app.APIKey, "not-a-token")
	want := "sync with " + url + ": the relay refused the API key or token: token is malformed"
	if got := Error(err); !strings.HasPrefix(got, want) || strings.Count(got, "unauthenticated") > 0 ||
		strings.Contains(got, "close frame") || strings.Contains(got, "transport:") || strings.Contains(got, "relay:") {
		t.Fatalf("rendered\n  %s\nwant it to begin\n  %s\n(the chain: %v)", got, want, err)
	}
}

// The store in use, where no layer names its folder: the sentence does,
// once, and says what to do.
func TestLockedFolderNamedOnce(t *testing.T) {
	dir := t.TempDir()
	db, err := badgerdir.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, err = badgerdir.Prepare(dir)
	got := Error(fmt.Errorf("relay: open store: %w", err))
	want := "relay: open store: the store in " + dir + " is in use by another process (a running relay or app, or a ferry command): stop it, then try again"
	if got != want {
		t.Fatalf("rendered\n  %s\nwant\n  %s\n(the chain: %v)", got, want, err)
	}
}

// A damaged store: what is damaged and where to read what to do, not
// Badger's words for it.
func TestDamaged(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "MANIFEST"), []byte("not a manifest"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := badgerdir.Prepare(dir)
	if !errors.Is(err, badgerdir.ErrDamaged) {
		t.Fatalf("Prepare: %v, want ErrDamaged", err)
	}
	got := Error(fmt.Errorf("inspect: %w", fmt.Errorf("ferry: store is damaged: %w", err)))
	want := "inspect: the store in " + dir + " is damaged: its MANIFEST (Badger's list of the store's tables) is unreadable; nothing in it was changed; see \"When a store is damaged\" in docs/operations.md"
	if got != want {
		t.Fatalf("rendered\n  %s\nwant\n  %s\n(the chain: %v)", got, want, err)
	}
}

func TestForeignFolder(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := badgerdir.Prepare(dir)
	notStore := errors.New("ferry: folder is not a Ferry store")
	got := Error(fmt.Errorf("open: %w", fmt.Errorf("%w: %w", notStore, err)))
	want := "open: " + dir + ` is not a Ferry store: it holds "notes.txt", which is none of a store's files; nothing in it was changed (give a new or empty folder)`
	if got != want {
		t.Fatalf("rendered\n  %s\nwant\n  %s\n(the chain: %v)", got, want, err)
	}
}

// Ferry's sentinels begin with "ferry: ", and so do some layers: printed
// under the program's own name, the prefix is dropped, not doubled.
func TestNoDoubledPrefix(t *testing.T) {
	sentinel := errors.New("ferry: record not found")
	for _, tc := range []struct {
		err  error
		want string
	}{
		{sentinel, "record not found"},
		{fmt.Errorf("%w: todos/x", sentinel), "record not found: todos/x"},
		{fmt.Errorf("inspect: %w", fmt.Errorf("ferry: open store d: %w", sentinel)), "inspect: open store d: record not found"},
	} {
		if got := Error(tc.err); got != tc.want {
			t.Errorf("Error(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestProtocolErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&transport.Error{Code: transport.CodeForbidden, Message: `token does not grant write on "notes"`},
			`the token does not grant this: token does not grant write on "notes"`},
		{&transport.Error{Code: transport.CodeInternal, Message: "internal error"},
			"the relay failed (internal error); trying again may help"},
		{&transport.Error{Code: transport.CodeShuttingDown, Message: "relay is shutting down"},
			"the relay is shutting down; try again shortly"},
		{fmt.Errorf("push: %w", &transport.Error{Code: "brand_new"}),
			`push: the relay answered "brand_new"`},
		{fmt.Errorf("sync: %w", errors.Join(transport.ErrClosed, transport.ErrPingTimeout)),
			"sync: the relay stopped answering (keepalive ping timed out)"},
		{errors.New("plain"), "plain"},
	} {
		if got := Error(tc.err); got != tc.want {
			t.Errorf("Error(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	if Error(nil) != "" {
		t.Error("Error(nil) is not empty")
	}
}

// PostgreSQL unreachable is blamed on the database, not on the relay.
func TestDatabaseUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	sock := t.TempDir()
	for dsn, want := range map[string]string{
		"postgres://ferry@" + addr + "/postgres": "open: cannot connect to the PostgreSQL database: nothing accepts connections at " + addr + ": is PostgreSQL running, and is that its address?",
		"host=" + sock + " user=ferry":           "open: cannot connect to the PostgreSQL database: no socket at " + sock + "/.s.PGSQL.5432: is PostgreSQL running, and is that its socket folder?",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := pgconn.Connect(ctx, dsn)
		cancel()
		if got := Error(fmt.Errorf("open: %w", fmt.Errorf("pgstore: connecting: %w", err))); got != want {
			t.Errorf("rendered\n  %s\nwant\n  %s\n(the chain: %v)", got, want, err)
		}
	}
}
