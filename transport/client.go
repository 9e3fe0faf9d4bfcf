package transport

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// DefaultLiveBuffer is how many live messages a Client holds for a slow
// reader of Live.
const DefaultLiveBuffer = 64

// presenceBuffer is how many presence messages a Client holds for a slow
// reader of Presence; past it, new ones are dropped (presence is
// ephemeral: the next heartbeat or state says it again).
const presenceBuffer = 256

// ClientOptions configure a Client; nil means defaults.
type ClientOptions struct {
	// LiveBuffer is the capacity of the Live channel; 0 means
	// DefaultLiveBuffer.
	LiveBuffer int
}

// Client makes requests over a Conn and receives live messages. It owns
// the Conn and runs the Conn's read loop in a goroutine that Close stops.
//
// Concurrency: every method may be called from any number of goroutines;
// Call's responses are matched to calls by id, and Close may be called more
// than once. Live messages arrive on the Live channel in order. If its reader falls LiveBuffer messages behind, the Client closes
// the connection (slow_consumer, close 4001) rather than grow without bound
// or stall the responses that share the read loop; the caller reconnects
// and subscribes again from its last applied cursor.
type Client struct {
	conn     *Conn
	live     chan *Live
	presence chan *Presence
	done     chan struct{} // closed when the read loop ends
	nextID   atomic.Uint64

	mu      sync.Mutex
	pending map[uint64]chan *Envelope // by request id; guarded by mu
	err     error                     // why the read loop ended; guarded by mu
}

// NewClient starts a Client on conn, which it owns from now on.
func NewClient(conn *Conn, opts *ClientOptions) *Client {
	n := DefaultLiveBuffer
	if opts != nil && opts.LiveBuffer > 0 {
		n = opts.LiveBuffer
	}
	c := &Client{
		conn:     conn,
		live:     make(chan *Live, n),
		presence: make(chan *Presence, presenceBuffer),
		done:     make(chan struct{}),
		pending:  make(map[uint64]chan *Envelope),
	}
	go c.readLoop()
	return c
}

// Live returns the channel of live messages from subscriptions. It is
// closed when the connection ends.
func (c *Client) Live() <-chan *Live { return c.live }

// Presence returns the channel of other peers' presence messages. It is
// closed when the connection ends. Unlike Live, a slow reader loses
// presence messages (beyond a buffer of 256) rather than the connection.
func (c *Client) Presence() <-chan *Presence { return c.presence }

// Done is closed when the connection has ended; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it is up. A
// connection-level error from the relay (an error message with id 0, such
// as shutting_down) is in the chain, as is ErrClosed.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Call sends req and waits for its response, decoding it into resp, which
// must be the response type (Welcome for Hello, Changes for Pull, Ack for
// Push, Lease for LeaseAcquire and LeaseRenew, OK for the rest), or nil to
// discard it. req is checked against the Conn's limits first. An error
// response is returned as *Error; a response of another type wraps
// ErrUnexpectedType. If ctx ends first, a late response is dropped.
func (c *Client) Call(ctx context.Context, req Body, resp Body) error {
	p, err := c.Start(ctx, req)
	if err != nil {
		return err
	}
	return p.Wait(ctx, resp)
}

// Pending is a request sent and not yet answered (Start).
type Pending struct {
	c   *Client
	id  uint64
	typ MessageType
	ch  chan *Envelope
}

// Start sends req and returns without waiting for its response, which
// Wait returns: several requests may be in flight at once, and they go on
// the wire in the order Start sends them (a relay answers pushes in that
// order; see docs/protocol.md). Wait must be called once, or Drop.
func (c *Client) Start(ctx context.Context, req Body) (*Pending, error) {
	if err := c.conn.limits.Validate(req); err != nil {
		return nil, fmt.Errorf("transport: %s request: %w", req.MessageType(), err)
	}
	id := c.nextID.Add(1)
	env, err := NewEnvelope(id, req)
	if err != nil {
		return nil, err
	}
	p := &Pending{c: c, id: id, typ: req.MessageType(), ch: make(chan *Envelope, 1)}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.pending[id] = p.ch
	c.mu.Unlock()
	if err := c.conn.Send(ctx, env); err != nil {
		p.Drop()
		return nil, err
	}
	return p, nil
}

// Drop forgets a request sent by Start: a late response is dropped.
func (p *Pending) Drop() {
	p.c.mu.Lock()
	delete(p.c.pending, p.id)
	p.c.mu.Unlock()
}

// Wait waits for the response to a request sent by Start and decodes it
// into resp, as Call does.
func (p *Pending) Wait(ctx context.Context, resp Body) error {
	defer p.Drop()
	c := p.c
	var r *Envelope
	select {
	case r = <-p.ch:
	case <-ctx.Done():
		return fmt.Errorf("transport: %s call: %w", p.typ, ctx.Err())
	case <-c.done:
		// The response may have arrived just before the end.
		select {
		case r = <-p.ch:
		default:
			return c.Err()
		}
	}
	if r.Type == TypeError {
		perr, err := DecodeBody[Error](r)
		if err != nil {
			return err
		}
		return perr
	}
	if resp == nil {
		return nil
	}
	if r.Type != resp.MessageType() {
		return fmt.Errorf("%w: %s answered with %s, want %s", ErrUnexpectedType, p.typ, r.Type, resp.MessageType())
	}
	return r.decodeInto(resp)
}

// Close closes the connection and waits for the read loop.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

func (c *Client) readLoop() {
	var remote error // a connection-level error the relay sent before closing
	defer func() {
		_ = c.conn.Close() // stops keepalive, whatever ended the loop
		close(c.live)
		close(c.presence)
		close(c.done)
	}()
	for {
		env, err := c.conn.Recv(context.Background())
		if err != nil {
			c.setErr(remote, err)
			return
		}
		if env.ID != 0 {
			c.mu.Lock()
			ch := c.pending[env.ID]
			delete(c.pending, env.ID)
			c.mu.Unlock()
			if ch != nil {
				ch <- env // buffered, and each id is answered once
			}
			continue
		}
		switch env.Type {
		case TypeLive:
			lv, err := DecodeBody[Live](env)
			if err != nil {
				perr := AsError(err)
				c.setErr(nil, c.conn.fail(perr))
				return
			}
			select {
			case c.live <- lv:
			default:
				perr := errorf(CodeSlowConsumer, "client fell %d live messages behind", cap(c.live))
				c.setErr(nil, c.conn.fail(perr))
				return
			}
		case TypePresence:
			p, err := DecodeBody[Presence](env)
			if err != nil {
				c.setErr(nil, c.conn.fail(AsError(err)))
				return
			}
			select {
			case c.presence <- p:
			default: // dropped: see Presence
			}
		case TypeError:
			if perr, err := DecodeBody[Error](env); err == nil {
				remote = perr
			}
		}
		// Other id-0 messages are not part of this version; ignore them.
	}
}

func (c *Client) setErr(remote, err error) {
	if remote != nil {
		err = &remoteClosed{remote: remote, closed: err}
	}
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

// remoteClosed is a connection the relay closed after saying why. Its text
// is the relay's reason: the WebSocket's own account of the close that
// followed ("failed to get reader: received close frame: status = ...")
// repeats it in other words. Both stay in the chain, for errors.Is and
// CloseStatus.
type remoteClosed struct {
	remote error // the relay's *Error
	closed error // the connection's end
}

func (e *remoteClosed) Error() string {
	return e.remote.Error() + " (the relay closed the connection)"
}

func (e *remoteClosed) Unwrap() []error { return []error{e.remote, e.closed} }
