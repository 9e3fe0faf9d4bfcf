package transport

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingListener counts the writes on the connections it accepts.
type countingListener struct {
	net.Listener
	writes atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, n: &l.writes}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

// acceptCounted serves one WebSocket on loopback, with the writes on its
// socket counted, and returns the relay side's Conn and a client dialed to
// it.
func acceptCounted(t *testing.T, opts *Options) (server, client *Conn, l *countingListener) {
	t.Helper()
	accepted := make(chan *Conn, 1)
	done := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r, opts)
		if err != nil {
			t.Errorf("Accept: %v", err)
			return
		}
		accepted <- c
		<-done
	}))
	l = &countingListener{Listener: srv.Listener}
	srv.Listener = l
	srv.Start()
	client = dialTest(t, "ws"+strings.TrimPrefix(srv.URL, "http"), &Options{PingInterval: -1})
	server = <-accepted
	t.Cleanup(func() {
		// Neither side reads: no close handshake, which would wait for one.
		_ = client.ws.CloseNow()
		_ = server.ws.CloseNow()
		close(done)
		srv.Close()
	})
	return server, client, l
}

// An accepted Conn writes a message larger than the WebSocket library's
// write buffer to its socket at once, not once per 4 KiB: one system call
// per live message or page, as per small message.
func TestLargeMessageOneSocketWrite(t *testing.T) {
	server, client, l := acceptCounted(t, &Options{PingInterval: -1})
	ctx := t.Context()
	for _, size := range []int{100, 4 << 10, 5 << 10, 20 << 10, fragmentSize - 256} {
		body := &Live{Collection: "c", Records: []RecordChanges{{Record: "r", Data: bytes.Repeat([]byte{byte(size)}, size), Heads: [][]byte{head(1)}}}, Next: uint64(size)}
		before := l.writes.Load()
		if err := server.SendBody(ctx, 0, body); err != nil {
			t.Fatal(err)
		}
		if n := l.writes.Load() - before; n != 1 {
			t.Errorf("a live message of %d bytes took %d socket writes, want 1", size, n)
		}
		e, err := client.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeBody[Live](e)
		if err != nil || got.Next != uint64(size) || !bytes.Equal(got.Records[0].Data, body.Records[0].Data) {
			t.Fatalf("received %v, %v; want the live message of %d bytes sent", got, err, size)
		}
	}
}

// Messages of every size sent from many goroutines at once, with pings
// and pongs passing between them, arrive whole, each goroutine's in the
// order sent.
func TestGatheredWritesKeepOrder(t *testing.T) {
	server, client, _ := acceptCounted(t, &Options{PingInterval: -1})
	ctx := t.Context()
	const senders, each = 8, 40
	// The client reads, which answers the server's pings; the server
	// pings as it sends, so pongs and pings cross the messages.
	recvd := make(chan *Envelope, senders*each)
	readErr := make(chan error, 1)
	go func() {
		for range senders * each {
			e, err := client.Recv(ctx)
			if err != nil {
				readErr <- err
				return
			}
			recvd <- e
		}
		readErr <- nil
	}()
	pingCtx, stopPings := context.WithCancel(ctx)
	var pings sync.WaitGroup
	pings.Go(func() {
		// The server's read loop below answers each with a pong, written
		// between its messages; the client's reads take the pongs.
		for pingCtx.Err() == nil {
			if err := client.ws.Ping(pingCtx); err != nil && pingCtx.Err() == nil {
				t.Errorf("ping: %v", err)
				return
			}
		}
	})
	go func() {
		for {
			if _, err := server.Recv(ctx); err != nil {
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := range each {
				size := (s*each + i) * 997 % (3 * fragmentSize / 2)
				data := bytes.Repeat([]byte{byte(s), byte(i)}, size/2+1)
				lv := &Live{Collection: fmt.Sprint(s), Records: []RecordChanges{{Record: fmt.Sprint(i), Data: data, Heads: [][]byte{head(1)}}}}
				var err error
				if i%2 == 0 {
					err = server.SendBody(ctx, uint64(i), lv)
				} else {
					frame, eerr := EncodeBody(uint64(i), lv)
					if eerr != nil {
						t.Error(eerr)
						return
					}
					err = server.SendEncodedWithin(ctx, TypeLive, frame, time.Minute)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := <-readErr; err != nil {
		t.Fatal(err)
	}
	stopPings()
	pings.Wait()
	close(recvd)
	next := make([]int, senders)
	for e := range recvd {
		lv, err := DecodeBody[Live](e)
		if err != nil {
			t.Fatal(err)
		}
		var s, i int
		fmt.Sscan(lv.Collection, &s)
		fmt.Sscan(lv.Records[0].Record, &i)
		if i != next[s] || e.ID != uint64(i) {
			t.Fatalf("sender %d: message %d (id %d) arrived after %d", s, i, e.ID, next[s]-1)
		}
		size := (s*each + i) * 997 % (3 * fragmentSize / 2)
		if want := bytes.Repeat([]byte{byte(s), byte(i)}, size/2+1); !bytes.Equal(lv.Records[0].Data, want) {
			t.Fatalf("sender %d: message %d arrived changed (%d bytes, want %d)", s, i, len(lv.Records[0].Data), len(want))
		}
		next[s]++
	}
	for s, n := range next {
		if n != each {
			t.Errorf("sender %d: %d messages arrived, want %d", s, n, each)
		}
	}
}

// smallBufListener gives the connections it accepts the smallest send
// buffer, so that a peer that does not read fills it quickly.
type smallBufListener struct{ net.Listener }

func (l smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		_ = c.(*net.TCPConn).SetWriteBuffer(1)
	}
	return c, err
}

// A message held to be written whole is still bounded by SendWithin: a
// peer that stops reading is cut off as a slow consumer, not left holding
// the sender (nor the gathered message) until keepalive gives up.
func TestGatheredWriteCutsOffSlowConsumer(t *testing.T) {
	accepted := make(chan *Conn, 1)
	done := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r, &Options{PingInterval: -1})
		if err != nil {
			t.Errorf("Accept: %v", err)
			return
		}
		accepted <- c
		<-done
	}))
	srv.Listener = smallBufListener{srv.Listener}
	srv.Start()
	defer srv.Close()
	defer close(done)
	client := dialTest(t, "ws"+strings.TrimPrefix(srv.URL, "http"), &Options{PingInterval: -1})
	defer client.ws.CloseNow()
	server := <-accepted
	if server.gather == nil {
		t.Fatal("the accepted Conn does not gather its writes")
	}
	frame, err := EncodeBody(0, &Live{Collection: "c", Records: []RecordChanges{{Record: "r", Data: bytes.Repeat([]byte{1}, 20<<10), Heads: [][]byte{head(1)}}}})
	if err != nil {
		t.Fatal(err)
	}
	// The client reads nothing: once its receive buffer and the server's
	// send buffer are full, a send waits until SendWithin cuts it off.
	// Each send before must have gone out whole: a message written only
	// in part would fail the first read (none is made here), and is
	// checked by TestGatheredWritesKeepOrder.
	for i := range 10_000 {
		err = server.SendEncodedWithin(t.Context(), TypeLive, frame, 200*time.Millisecond)
		if err != nil {
			break
		}
		if i == 9_999 {
			t.Fatal("10,000 messages of 20 KiB sent to a peer that reads none")
		}
	}
	wantSlowConsumer(t, "SendEncodedWithin to a peer that stopped reading", err)
	wantSlowConsumer(t, "a later send", server.SendEncodedWithin(t.Context(), TypeLive, frame, time.Second))
}

// TestGatherShortFrameStillWritten: if a frame turns out smaller than a
// gather was told (a library that frames differently), what was held goes
// out when the write returns, not lost; after a failed write it is
// dropped, as the connection is closed.
func TestGatherShortFrameStillWritten(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	g := &gatherConn{Conn: a}
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 100)
		n, _ := io.ReadAtLeast(b, buf, 50)
		got <- buf[:n]
	}()
	g.gather(100)
	msg := bytes.Repeat([]byte{7}, 50)
	if _, err := g.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := g.done(true); err != nil {
		t.Fatal(err)
	}
	if r := <-got; !bytes.Equal(r, msg) {
		t.Fatalf("read %d bytes, want the 50 written", len(r))
	}

	g.gather(100)
	if _, err := g.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := g.done(false); err != nil || g.held != nil || g.want != 0 {
		t.Fatalf("after a failed write: %v, held %v, want %d", err, g.held != nil, g.want)
	}
}
