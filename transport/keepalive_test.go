package transport

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
)

// pipeConns connects a client and a server Conn over net.Pipe, through the
// real Dial and Accept handshakes, so that the pair can live in a synctest
// bubble (a TCP socket cannot: blocking on it is not durable).
func pipeConns(t *testing.T, clientOpts, serverOpts Options) (client, server *Conn) {
	t.Helper()
	rt := pipeTransport(func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r, &serverOpts)
		if err != nil {
			t.Errorf("Accept: %v", err)
		}
		server = c
	})
	clientOpts.Dial = &websocket.DialOptions{HTTPClient: &http.Client{Transport: rt}}
	client, err := Dial(t.Context(), "ws://pipe", &clientOpts)
	if err != nil {
		t.Fatal(err)
	}
	return client, server
}

// pipeTransport answers the handshake request with h and hands both ends of
// a net.Pipe to the two sides.
type pipeTransport http.HandlerFunc

func (h pipeTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	cc, sc := net.Pipe()
	rec := pipeHijacker{ResponseRecorder: httptest.NewRecorder(), conn: sc}
	h(rec, r)
	resp := rec.Result()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = cc
	}
	return resp, nil
}

type pipeHijacker struct {
	*httptest.ResponseRecorder
	conn net.Conn
}

func (h pipeHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return h.conn, bufio.NewReadWriter(bufio.NewReader(h.conn), bufio.NewWriter(h.conn)), nil
}

// recvUntilError runs a read loop, which keepalive needs to see pongs, and
// delivers its final error.
func recvUntilError(c *Conn) <-chan error {
	ch := make(chan error, 1)
	go func() {
		for {
			if _, err := c.Recv(context.Background()); err != nil {
				ch <- err
				return
			}
		}
	}()
	return ch
}

func TestKeepalivePingsHealthyPeer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var pings atomic.Int32
		serverOpts := Options{PingInterval: -1, Accept: &websocket.AcceptOptions{
			OnPingReceived: func(context.Context, []byte) bool { pings.Add(1); return true },
		}}
		client, server := pipeConns(t, Options{PingInterval: 15 * time.Second}, serverOpts)
		clientErr, serverErr := recvUntilError(client), recvUntilError(server)

		time.Sleep(61 * time.Second) // fake time: pings at 15, 30, 45 and 60 s
		synctest.Wait()
		if n := pings.Load(); n != 4 {
			t.Errorf("server saw %d pings in 61 s, want 4", n)
		}
		select {
		case err := <-clientErr:
			t.Fatalf("client closed: %v", err)
		default:
		}

		if err := client.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-serverErr; CloseStatus(err) != CloseNormal {
			t.Errorf("server saw %v, want normal closure", err)
		}
		_ = server.Close()
		if err := <-clientErr; !errors.Is(err, ErrClosed) {
			t.Errorf("client Recv = %v, want ErrClosed", err)
		}
	})
}

func TestKeepaliveClosesOnMissingPong(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		serverOpts := Options{PingInterval: -1, Accept: &websocket.AcceptOptions{
			OnPingReceived: func(context.Context, []byte) bool { return false }, // never pong
		}}
		client, server := pipeConns(t, Options{PingInterval: 15 * time.Second, PingTimeout: 5 * time.Second}, serverOpts)
		start := time.Now()
		clientErr, serverErr := recvUntilError(client), recvUntilError(server)

		err := <-clientErr
		if !errors.Is(err, ErrPingTimeout) || !errors.Is(err, ErrClosed) {
			t.Errorf("client Recv = %v, want ErrPingTimeout and ErrClosed", err)
		}
		if d := time.Since(start); d != 20*time.Second {
			t.Errorf("closed after %v, want interval+timeout = 20s", d)
		}
		if err := <-serverErr; !errors.Is(err, ErrClosed) {
			t.Errorf("server Recv = %v, want ErrClosed", err)
		}
		_ = client.Close()
		_ = server.Close()
	})
}

func TestKeepaliveOffAndCloseWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, server := pipeConns(t, Options{PingInterval: -1}, Options{PingInterval: -1})
		clientErr, serverErr := recvUntilError(client), recvUntilError(server)
		time.Sleep(time.Hour)
		synctest.Wait()
		select {
		case err := <-clientErr:
			t.Fatalf("client closed without keepalive: %v", err)
		case err := <-serverErr:
			t.Fatalf("server closed without keepalive: %v", err)
		default:
		}
		_ = server.Close()
		_ = client.Close()
		<-clientErr
		<-serverErr
		// synctest.Test fails if a goroutine is left: Close stopped them all.
	})
}
