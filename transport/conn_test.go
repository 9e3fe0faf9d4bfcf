package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
)

// startServer serves WebSockets on loopback, running serve on each accepted
// Conn and sending what serve returns to the returned channel. Cleanup
// closes the server's Conns and waits for every handler.
func startServer(t *testing.T, opts *Options, serve func(*Conn) error) (url string, errs <-chan error) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []*Conn
	)
	ch := make(chan error, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wg.Add(1) // before the hijack, so srv.Close waits for this Add
		defer wg.Done()
		c, err := Accept(w, r, opts)
		if err != nil {
			t.Errorf("Accept: %v", err)
			return
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		err = serve(c)
		_ = c.Close()
		ch <- err
	}))
	t.Cleanup(func() {
		srv.Close()
		mu.Lock()
		cs := conns
		mu.Unlock()
		for _, c := range cs {
			_ = c.Close()
		}
		wg.Wait()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http"), ch
}

func dialTest(t *testing.T, url string, opts *Options) *Conn {
	t.Helper()
	c, err := Dial(t.Context(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// echo sends every message back unchanged, or an error reply if its body
// does not decode.
func echo(c *Conn) error {
	ctx := context.Background()
	for {
		e, err := c.Recv(ctx)
		if err != nil {
			return err
		}
		if _, derr := e.Message(); derr != nil {
			err = c.SendBody(ctx, e.ID, AsError(derr))
		} else {
			err = c.Send(ctx, e)
		}
		if err != nil {
			return err
		}
	}
}

// roundTrip sends body and returns the decoded reply.
func roundTrip(t *testing.T, c *Conn, id uint64, body Body) Body {
	t.Helper()
	if err := c.SendBody(t.Context(), id, body); err != nil {
		t.Fatalf("send %s: %v", body.MessageType(), err)
	}
	e, err := c.Recv(t.Context())
	if err != nil {
		t.Fatalf("recv after %s: %v", body.MessageType(), err)
	}
	if e.ID != id {
		t.Errorf("reply id %d, want %d", e.ID, id)
	}
	got, err := e.Message()
	if err != nil {
		t.Fatalf("reply to %s: %v", body.MessageType(), err)
	}
	return got
}

func TestConnEchoEveryType(t *testing.T) {
	url, _ := startServer(t, nil, echo)
	c := dialTest(t, url, nil)
	for i, want := range sampleBodies() {
		got := roundTrip(t, c, uint64(100+i), want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: echoed\n got %#v\nwant %#v", want.MessageType(), got, want)
		}
	}
}

// wantErrorThenClose reads the error message a Conn sends before closing
// for a protocol violation, then the close.
func wantErrorThenClose(t *testing.T, c *Conn, code Code, status StatusCode) {
	t.Helper()
	e, err := c.Recv(t.Context())
	if err != nil {
		t.Fatalf("want an error message, got %v", err)
	}
	if e.Type != TypeError || e.ID != 0 {
		t.Fatalf("got %s id %d, want error id 0", e.Type, e.ID)
	}
	perr, err := DecodeBody[Error](e)
	if err != nil {
		t.Fatal(err)
	}
	if perr.Code != code {
		t.Errorf("error code %q (%s), want %q", perr.Code, perr.Message, code)
	}
	wantClosed(t, c, status, string(code))
}

func wantClosed(t *testing.T, c *Conn, status StatusCode, reason string) {
	t.Helper()
	_, err := c.Recv(t.Context())
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Recv = %v, want ErrClosed", err)
	}
	var ce websocket.CloseError
	if !errors.As(err, &ce) {
		t.Fatalf("Recv = %v, want a close frame", err)
	}
	if ce.Code != status || (reason != "" && ce.Reason != reason) {
		t.Errorf("closed with %d %q, want %d %q", ce.Code, ce.Reason, status, reason)
	}
	if CloseStatus(err) != status {
		t.Errorf("CloseStatus = %d, want %d", CloseStatus(err), status)
	}
}

func TestConnBadFrameClosesOnlyThatConn(t *testing.T) {
	url, serverErrs := startServer(t, nil, echo)
	good := dialTest(t, url, nil)
	hello := &Hello{Versions: []uint16{1}}
	roundTrip(t, good, 1, hello)

	for _, tc := range []struct {
		name   string
		frame  []byte
		code   Code
		status StatusCode
	}{
		{"dd ff ff ff ff", []byte{0xdd, 0xff, 0xff, 0xff, 0xff}, CodeBadFrame, ClosePolicy},
		{"dd ff ff ff ff in body", rawFrame(1, "push", 1, []byte{0xdd, 0xff, 0xff, 0xff, 0xff}), CodeBadFrame, ClosePolicy},
		{"20,000 × dc ff ff", []byte(strings.Repeat("\xdc\xff\xff", 20000)), CodeBadFrame, ClosePolicy},
		{"truncated", mustFrame(1, hello)[:10], CodeBadFrame, ClosePolicy},
		{"unknown type", rawFrame(1, "teleport", 1, []byte{0x80}), CodeBadFrame, ClosePolicy},
		{"version 2", rawFrame(2, "pull", 1, []byte{0x80}), CodeUnsupportedVersion, ClosePolicy},
		{"too deep", rawFrame(1, "pull", 1, []byte(strings.Repeat("\x91", 40)+"\xc0")), CodeTooLarge, CloseTooBig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := dialTest(t, url, nil)
			if err := bad.write(t.Context(), t.Context(), tc.frame); err != nil {
				t.Fatal(err)
			}
			wantErrorThenClose(t, bad, tc.code, tc.status)
			err := <-serverErrs
			wantCode(t, "server Recv", err, tc.code)
			if !errors.Is(err, ErrClosed) {
				t.Errorf("server Recv = %v, want ErrClosed too", err)
			}
			// The other connection is untouched.
			if got := roundTrip(t, good, 2, hello); !reflect.DeepEqual(got, hello) {
				t.Errorf("good conn echoed %#v", got)
			}
		})
	}
}

func TestConnTextMessageRefused(t *testing.T) {
	url, serverErrs := startServer(t, nil, echo)
	c := dialTest(t, url, nil)
	if err := c.ws.Write(t.Context(), websocket.MessageText, []byte(`{"type":"hello"}`)); err != nil {
		t.Fatal(err)
	}
	wantErrorThenClose(t, c, CodeBadFrame, ClosePolicy)
	wantCode(t, "server Recv", <-serverErrs, CodeBadFrame)
}

func TestConnOversizedMessage(t *testing.T) {
	url, serverErrs := startServer(t, &Options{Limits: Limits{MaxFrame: 1024}}, echo)
	c := dialTest(t, url, nil) // its own limit is the 4 MiB default
	if err := c.SendBody(t.Context(), 1, &Auth{Token: strings.Repeat("t", 4096)}); err != nil {
		t.Fatal(err)
	}
	wantClosed(t, c, CloseTooBig, "")
	err := <-serverErrs
	if !errors.Is(err, ErrTooLarge) || !errors.Is(err, ErrClosed) {
		t.Errorf("server Recv = %v, want ErrTooLarge and ErrClosed", err)
	}
}

func TestConnSendRefusesOversized(t *testing.T) {
	url, _ := startServer(t, nil, echo)
	c := dialTest(t, url, &Options{Limits: Limits{MaxFrame: 64}})
	err := c.SendBody(t.Context(), 1, &Auth{Token: strings.Repeat("t", 100)})
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("Send = %v, want ErrTooLarge", err)
	}
	// Nothing was sent, so the connection still works.
	want := &Auth{Token: "t"}
	if got := roundTrip(t, c, 2, want); !reflect.DeepEqual(got, want) {
		t.Errorf("echoed %#v", got)
	}
}

func TestConnCloseWithError(t *testing.T) {
	url, _ := startServer(t, nil, func(c *Conn) error {
		if _, err := c.Recv(context.Background()); err != nil {
			return err
		}
		return c.CloseWithError(CodeShuttingDown, "maintenance")
	})
	c := dialTest(t, url, nil)
	if err := c.SendBody(t.Context(), 1, &Pull{Collection: "c"}); err != nil {
		t.Fatal(err)
	}
	e, err := c.Recv(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	perr, err := DecodeBody[Error](e)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(perr, ErrShuttingDown) || perr.Message != "maintenance" {
		t.Errorf("error message %+v", perr)
	}
	wantClosed(t, c, CloseShuttingDown, string(CodeShuttingDown))
}

func TestConnCloseIsFinal(t *testing.T) {
	url, serverErrs := startServer(t, nil, echo)
	c := dialTest(t, url, nil)
	if err := c.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := c.SendBody(t.Context(), 1, &OK{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
	if _, err := c.Recv(t.Context()); !errors.Is(err, ErrClosed) {
		t.Errorf("Recv after Close = %v, want ErrClosed", err)
	}
	if err := <-serverErrs; CloseStatus(err) != CloseNormal {
		t.Errorf("server saw %v, want a normal closure", err)
	}
}

func TestDialAndAcceptOptions(t *testing.T) {
	opts := &Options{PingInterval: -1, Dial: &websocket.DialOptions{HTTPHeader: http.Header{"X-Test": {"1"}}}}
	before := *opts
	url, _ := startServer(t, nil, echo)
	c := dialTest(t, url, opts)
	if !reflect.DeepEqual(*opts, before) {
		t.Errorf("Dial modified its options: %+v", *opts)
	}
	if got := c.Limits(); got != DefaultLimits() {
		t.Errorf("Limits() = %+v, want defaults", got)
	}
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	if _, err := Dial(t.Context(), "ws"+strings.TrimPrefix(plain.URL, "http"), nil); err == nil {
		t.Error("Dial to a plain HTTP server succeeded")
	}
}

func TestCloseCodeFor(t *testing.T) {
	for code, want := range map[Code]StatusCode{
		"":                     CloseNormal,
		CodeBadFrame:           ClosePolicy,
		CodeUnauthenticated:    ClosePolicy,
		CodeTokenExpired:       ClosePolicy,
		CodeUnsupportedVersion: ClosePolicy,
		CodeTooLarge:           CloseTooBig,
		CodeInternal:           CloseInternal,
		CodeRateLimited:        CloseTryAgainLater,
		CodeBusy:               CloseTryAgainLater,
		CodeSlowConsumer:       CloseSlowConsumer,
		CodeShuttingDown:       CloseShuttingDown,
	} {
		if got := closeCodeFor(code); got != want {
			t.Errorf("closeCodeFor(%q) = %d, want %d", code, got, want)
		}
	}
}

// TestConnLargeMessage sends a message of many fragments both ways.
func TestConnLargeMessage(t *testing.T) {
	url, _ := startServer(t, nil, echo)
	c := dialTest(t, url, nil)
	var recs []RecordChanges
	for i := range 3 {
		data := bytes.Repeat([]byte{byte(i)}, DefaultMaxRecord)
		recs = append(recs, RecordChanges{Record: fmt.Sprint("r", i), Data: data, Heads: [][]byte{head(byte(i))}})
	}
	want := &Push{Collection: "big", Fence: 1, Records: recs}
	if got := roundTrip(t, c, 1, want); !reflect.DeepEqual(got, want) {
		t.Error("3 MiB push changed on its way back")
	}
}
