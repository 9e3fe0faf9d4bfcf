package transport

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// bigLive is a live message of several 32 KiB fragments: more than a
// net.Pipe, which buffers nothing, lets through to a peer that does not
// read.
func bigLive(t *testing.T) *Envelope {
	t.Helper()
	e, err := NewEnvelope(0, &Live{Collection: "c", Next: 1, Records: []RecordChanges{
		{Record: "r", Seq: 1, Data: bytes.Repeat([]byte{7}, 100<<10), Heads: [][]byte{head(1)}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func wantSlowConsumer(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrSlowConsumer) || !errors.Is(err, ErrClosed) {
		t.Fatalf("%s = %v, want ErrSlowConsumer and ErrClosed", what, err)
	}
}

// A peer that takes nothing is cut off d after the send began, plus the
// grace its close frame had, not when keepalive would notice (here never:
// it is off).
func TestSendWithinCutsOffPeerThatNeverReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, server := pipeConns(t, Options{PingInterval: -1}, Options{PingInterval: -1})
		const d = 3 * time.Second
		start := time.Now()
		err := server.SendWithin(context.Background(), bigLive(t), d)
		wantSlowConsumer(t, "SendWithin", err)
		if took := time.Since(start); took != d+slowCloseGrace {
			t.Errorf("cut off after %v, want %v", took, d+slowCloseGrace)
		}
		// The Conn is closed: later sends and receives say why.
		wantSlowConsumer(t, "Send after the cut", server.Send(context.Background(), bigLive(t)))
		_, err = server.Recv(context.Background())
		wantSlowConsumer(t, "Recv after the cut", err)
		// The peer, reading at last, finds the socket gone without a
		// close frame: none could pass the message stuck in front of it.
		_, err = client.Recv(context.Background())
		if !errors.Is(err, ErrClosed) || CloseStatus(err) != -1 {
			t.Errorf("peer Recv = %v (status %d), want ErrClosed without a close frame", err, CloseStatus(err))
		}
		_ = client.Close()
		_ = server.Close()
	})
}

// A peer that reads, but late, gets the close frame 4001 slow_consumer
// between two fragments of the message it was too slow to take.
func TestSendWithinCloseFrameReachesLateReader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, server := pipeConns(t, Options{PingInterval: -1}, Options{PingInterval: -1})
		const d = 3 * time.Second
		start := time.Now()
		sent := make(chan error, 1)
		go func() { sent <- server.SendWithin(context.Background(), bigLive(t), d) }()

		time.Sleep(d + time.Millisecond) // the slowness under test
		_, err := client.Recv(context.Background())
		if CloseStatus(err) != CloseSlowConsumer || !errors.Is(err, ErrClosed) {
			t.Errorf("peer Recv = %v (status %d), want close %d", err, CloseStatus(err), CloseSlowConsumer)
		}
		wantSlowConsumer(t, "SendWithin", <-sent)
		if took := time.Since(start); took >= d+slowCloseGrace {
			t.Errorf("cut off after %v: the close handshake should end it before the grace (%v)", took, slowCloseGrace)
		}
		_ = client.Close()
		_ = server.Close()
	})
}

// d covers the wait for the turn: a live message queued behind a write
// stuck on the peer cuts the peer off, and the stuck write ends with it.
func TestSendWithinCutsOffWhileWaitingForTurn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, server := pipeConns(t, Options{PingInterval: -1}, Options{PingInterval: -1})
		stuck := make(chan error, 1)
		go func() { stuck <- server.Send(context.Background(), bigLive(t)) }()
		synctest.Wait() // Send holds the turn, blocked on the pipe

		const d = 3 * time.Second
		start := time.Now()
		e, _ := NewEnvelope(0, &Live{Collection: "c", Next: 2})
		wantSlowConsumer(t, "SendWithin behind a stuck write", server.SendWithin(context.Background(), e, d))
		if took := time.Since(start); took != d+slowCloseGrace {
			t.Errorf("cut off after %v, want %v", took, d+slowCloseGrace)
		}
		wantSlowConsumer(t, "the stuck Send", <-stuck)
		_ = client.Close()
		_ = server.Close()
	})
}

// A peer that keeps reading gets every message, and nothing is cut; ctx
// still ends a wait for the turn without harm to the connection.
func TestSendWithinInTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client, server := pipeConns(t, Options{PingInterval: -1}, Options{PingInterval: -1})
		got := make(chan error, 1)
		go func() {
			for range 3 {
				if _, err := client.Recv(context.Background()); err != nil {
					got <- err
					return
				}
			}
			got <- nil
		}()
		for i := range 3 {
			if err := server.SendWithin(context.Background(), bigLive(t), time.Second); err != nil {
				t.Fatalf("SendWithin %d: %v", i, err)
			}
		}
		if err := <-got; err != nil {
			t.Fatalf("peer Recv: %v", err)
		}

		// A canceled wait for the turn is the caller's business, not a
		// slow consumer.
		stuck := make(chan error, 1)
		go func() { stuck <- server.Send(context.Background(), bigLive(t)) }()
		synctest.Wait()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := server.SendWithin(ctx, bigLive(t), time.Hour); !errors.Is(err, context.Canceled) || errors.Is(err, ErrClosed) {
			t.Fatalf("SendWithin with a canceled ctx = %v, want context.Canceled", err)
		}
		if _, err := client.Recv(context.Background()); err != nil {
			t.Fatalf("peer Recv of the message in front: %v", err)
		}
		if err := <-stuck; err != nil {
			t.Fatalf("Send: %v", err)
		}
		_ = client.Close()
		_ = server.Close()
	})
}
