package transport

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// fakeRelay answers requests the way the relay would, with canned data:
//   - pull of "silent" gets no answer (signalled on silent, if set); pull of
//     "shutdown" closes the session with shutting_down;
//   - a push or lease with a fence other than 0 or 7 gets stale_fence;
//   - subscribe with cursor n is answered, then followed by n live messages.
type fakeRelay struct {
	silent chan struct{}
}

func (f *fakeRelay) serve(c *Conn) error {
	ctx := context.Background()
	for {
		e, err := c.Recv(ctx)
		if err != nil {
			return err
		}
		msg, err := e.Message()
		if err != nil {
			if err := c.SendBody(ctx, e.ID, AsError(err)); err != nil {
				return err
			}
			continue
		}
		var reply Body
		stale := &Error{Code: CodeStaleFence, Message: "lease moved on"}
		switch m := msg.(type) {
		case *Hello:
			v, ok := Negotiate(m.Versions)
			if !ok {
				reply = &Error{Code: CodeUnsupportedVersion, Message: "speak 1"}
				break
			}
			reply = &Welcome{Version: v, RelayID: "relay-1", Incarnation: "inc-1", Limits: c.Limits()}
		case *Auth:
			reply = &OK{}
		case *Pull:
			switch m.Collection {
			case "silent":
				if f.silent != nil {
					f.silent <- struct{}{}
				}
				continue
			case "shutdown":
				return c.CloseWithError(CodeShuttingDown, "bye")
			}
			reply = &Changes{Collection: m.Collection, Next: m.Cursor + 1, Records: []RecordChanges{
				{Record: "r1", Seq: m.Cursor + 1, Snapshot: m.Cursor == 0, Data: []byte("doc"), Heads: [][]byte{head(1)}},
			}}
		case *Push:
			if m.Fence != 0 && m.Fence != 7 {
				reply = stale
				break
			}
			ack := &Ack{Collection: m.Collection, Seq: 42}
			for _, r := range m.Records {
				ack.Records = append(ack.Records, RecordAck{Record: r.Record, Heads: r.Heads})
			}
			reply = ack
		case *Subscribe:
			if err := c.SendBody(ctx, e.ID, &OK{}); err != nil {
				return err
			}
			for i := range m.Cursor {
				lv := &Live{Collection: m.Collection, Next: i + 1, Records: []RecordChanges{{Record: "r", Data: []byte{1}}}}
				if err := c.SendBody(ctx, 0, lv); err != nil {
					return err
				}
			}
			continue
		case *Unsubscribe, *LeaseRelease:
			reply = &OK{}
		case *LeaseAcquire:
			reply = &Lease{Collection: m.Collection, Fence: 7, ExpiresMS: int64(m.TTLMS)}
		case *LeaseRenew:
			if m.Fence != 7 {
				reply = stale
				break
			}
			reply = &Lease{Collection: m.Collection, Fence: 7, ExpiresMS: int64(m.TTLMS)}
		default:
			reply = &Error{Code: CodeBadFrame, Message: fmt.Sprintf("%s is not a request", e.Type)}
		}
		if err := c.SendBody(ctx, e.ID, reply); err != nil {
			return err
		}
	}
}

func newTestClient(t *testing.T, f *fakeRelay, opts *ClientOptions) (*Client, <-chan error) {
	t.Helper()
	url, serverErrs := startServer(t, nil, f.serve)
	c := NewClient(dialTest(t, url, nil), opts)
	t.Cleanup(func() { _ = c.Close() })
	return c, serverErrs
}

func TestClientRequests(t *testing.T) {
	c, _ := newTestClient(t, &fakeRelay{}, nil)
	ctx := t.Context()

	var w Welcome
	if err := c.Call(ctx, &Hello{APIKey: "k", Token: "t", ReplicaID: "r", Versions: SupportedVersions()}, &w); err != nil {
		t.Fatal(err)
	}
	if w.Version != ProtocolVersion || w.RelayID != "relay-1" || w.Limits != DefaultLimits() {
		t.Errorf("welcome = %+v", w)
	}
	if err := c.Call(ctx, &Auth{Token: "fresh"}, &OK{}); err != nil {
		t.Errorf("auth: %v", err)
	}

	var ch Changes
	if err := c.Call(ctx, &Pull{Collection: "todos", Cursor: 0, Limit: 10}, &ch); err != nil {
		t.Fatal(err)
	}
	if ch.Next != 1 || len(ch.Records) != 1 || !ch.Records[0].Snapshot {
		t.Errorf("changes = %+v", ch)
	}

	var ls Lease
	if err := c.Call(ctx, &LeaseAcquire{Collection: "todos", TTLMS: 3000}, &ls); err != nil {
		t.Fatal(err)
	}
	if ls.Fence != 7 || ls.ExpiresMS != 3000 {
		t.Errorf("lease = %+v", ls)
	}
	if err := c.Call(ctx, &LeaseRenew{Collection: "todos", Fence: ls.Fence, TTLMS: 4000}, &ls); err != nil || ls.ExpiresMS != 4000 {
		t.Errorf("renew: %+v, %v", ls, err)
	}

	var ack Ack
	push := &Push{Collection: "todos", Fence: ls.Fence, Records: []RecordChanges{{Record: "r9", Data: []byte("c"), Heads: [][]byte{head(9)}}}}
	if err := c.Call(ctx, push, &ack); err != nil {
		t.Fatal(err)
	}
	if ack.Seq != 42 || len(ack.Records) != 1 || ack.Records[0].Record != "r9" {
		t.Errorf("ack = %+v", ack)
	}

	// A stale fence is an error reply, matched by errors.Is, and the
	// session goes on.
	push.Fence = 6
	err := c.Call(ctx, push, &ack)
	var perr *Error
	if !errors.Is(err, ErrStaleFence) || !errors.As(err, &perr) || perr.Message != "lease moved on" {
		t.Errorf("push with stale fence: %v", err)
	}
	if err := c.Call(ctx, &LeaseRelease{Collection: "todos", Fence: 7}, nil); err != nil {
		t.Errorf("release: %v", err)
	}

	// The wrong response type is reported, not decoded into.
	if err := c.Call(ctx, &Pull{Collection: "todos"}, &Ack{}); !errors.Is(err, ErrUnexpectedType) {
		t.Errorf("pull into Ack: %v, want ErrUnexpectedType", err)
	}
	// An invalid request fails before it is sent.
	if err := c.Call(ctx, &Pull{}, &ch); !errors.Is(err, ErrBadFrame) {
		t.Errorf("pull without collection: %v, want ErrBadFrame", err)
	}
}

func TestClientConcurrentCalls(t *testing.T) {
	c, _ := newTestClient(t, &fakeRelay{}, nil)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 20 {
				cursor := uint64(g*1000 + i)
				var ch Changes
				if err := c.Call(t.Context(), &Pull{Collection: "c", Cursor: cursor}, &ch); err != nil {
					t.Error(err)
					return
				}
				if ch.Next != cursor+1 {
					t.Errorf("pull at %d answered with next %d: responses crossed", cursor, ch.Next)
				}
			}
		})
	}
	wg.Wait()
}

func TestClientLive(t *testing.T) {
	c, _ := newTestClient(t, &fakeRelay{}, nil)
	if err := c.Call(t.Context(), &Subscribe{Collection: "todos", Cursor: 3}, &OK{}); err != nil {
		t.Fatal(err)
	}
	for want := uint64(1); want <= 3; want++ {
		lv := <-c.Live()
		if lv.Collection != "todos" || lv.Next != want {
			t.Errorf("live = %+v, want next %d", lv, want)
		}
	}
	if err := c.Call(t.Context(), &Unsubscribe{Collection: "todos"}, &OK{}); err != nil {
		t.Error(err)
	}
}

func TestClientSlowConsumerIsClosed(t *testing.T) {
	c, serverErrs := newTestClient(t, &fakeRelay{}, &ClientOptions{LiveBuffer: 1})
	if err := c.Call(t.Context(), &Subscribe{Collection: "todos", Cursor: 3}, &OK{}); err != nil {
		t.Fatal(err)
	}
	<-c.Done() // nobody reads Live: the second live message overflows it
	if err := c.Err(); !errors.Is(err, ErrSlowConsumer) || !errors.Is(err, ErrClosed) {
		t.Errorf("Err = %v, want ErrSlowConsumer and ErrClosed", err)
	}
	if err := <-serverErrs; CloseStatus(err) != CloseSlowConsumer {
		t.Errorf("server saw %v, want close %d", err, CloseSlowConsumer)
	}
	// The buffered message is still there, then the channel is closed.
	n := 0
	for range c.Live() {
		n++
	}
	if n != 1 {
		t.Errorf("%d live messages left, want 1", n)
	}
	if err := c.Call(t.Context(), &Pull{Collection: "c"}, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Call after close = %v, want ErrClosed", err)
	}
}

func TestClientCallCanceled(t *testing.T) {
	f := &fakeRelay{silent: make(chan struct{})}
	c, _ := newTestClient(t, f, nil)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-f.silent // the relay holds the request
		cancel()
	}()
	if err := c.Call(ctx, &Pull{Collection: "silent"}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Call = %v, want context.Canceled", err)
	}
	// The connection is fine.
	if err := c.Call(t.Context(), &Pull{Collection: "c"}, &Changes{}); err != nil {
		t.Errorf("Call after a canceled one: %v", err)
	}
}

func TestClientRemoteShutdown(t *testing.T) {
	c, _ := newTestClient(t, &fakeRelay{}, nil)
	err := c.Call(t.Context(), &Pull{Collection: "shutdown"}, nil)
	if !errors.Is(err, ErrShuttingDown) || !errors.Is(err, ErrClosed) || CloseStatus(err) != CloseShuttingDown {
		t.Errorf("Call = %v, want ErrShuttingDown, ErrClosed and close %d", err, CloseShuttingDown)
	}
	// The relay's reason, once: not the WebSocket's account of the close.
	if s := err.Error(); strings.Contains(s, "close frame") || strings.Count(s, "shutting") != 1 {
		t.Errorf("Call = %q: the reason is repeated", s)
	}
	<-c.Done()
	if _, open := <-c.Live(); open {
		t.Error("Live still open after the connection ended")
	}
}

func TestClientClose(t *testing.T) {
	c, serverErrs := newTestClient(t, &fakeRelay{}, nil)
	if err := c.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	select {
	case <-c.Done():
	default:
		t.Error("Done not closed after Close returned")
	}
	if !errors.Is(c.Err(), ErrClosed) {
		t.Errorf("Err = %v, want ErrClosed", c.Err())
	}
	if err := <-serverErrs; CloseStatus(err) != CloseNormal {
		t.Errorf("server saw %v, want a normal closure", err)
	}
}
