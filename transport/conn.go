package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// StatusCode is a WebSocket close status code.
type StatusCode = websocket.StatusCode

// Close codes. A Conn that closes for a protocol error sends an error
// message first, then a close frame whose reason is the error's Code, so a
// client that sees only the close frame (a browser) still gets the code.
const (
	CloseNormal        StatusCode = websocket.StatusNormalClosure   // 1000: done
	ClosePolicy        StatusCode = websocket.StatusPolicyViolation // 1008: bad frame, version, auth failures
	CloseTooBig        StatusCode = websocket.StatusMessageTooBig   // 1009: message over max_frame
	CloseInternal      StatusCode = websocket.StatusInternalError   // 1011: the relay failed
	CloseTryAgainLater StatusCode = websocket.StatusTryAgainLater   // 1013: rate limited, or busy
	CloseSlowConsumer  StatusCode = 4001                            // live messages not read fast enough
	CloseShuttingDown  StatusCode = 4002                            // relay stopping; reconnect later
)

// closeCodeFor maps a protocol error code to the close status a Conn closes
// with after sending that error.
func closeCodeFor(code Code) StatusCode {
	switch code {
	case "":
		return CloseNormal
	case CodeTooLarge:
		return CloseTooBig
	case CodeInternal:
		return CloseInternal
	case CodeRateLimited, CodeBusy:
		return CloseTryAgainLater
	case CodeSlowConsumer:
		return CloseSlowConsumer
	case CodeShuttingDown:
		return CloseShuttingDown
	}
	return ClosePolicy
}

// CloseStatus returns the close status in err's chain (one received from
// the peer, or sent by this side for a protocol error), or -1.
func CloseStatus(err error) StatusCode { return websocket.CloseStatus(err) }

// Keepalive defaults.
const (
	DefaultPingInterval = 15 * time.Second
	DefaultPingTimeout  = 10 * time.Second
)

// Options configure a Conn. A nil *Options means all defaults; Dial and
// Accept copy what they use and never modify it.
type Options struct {
	// Limits bound what this side accepts and sends; zero fields are
	// defaults. The read limit of the WebSocket is Limits.MaxFrame, so the
	// library refuses a larger message (close 1009) before buffering it.
	Limits Limits
	// PingInterval is how often the Conn pings its peer; 0 means
	// DefaultPingInterval and a negative value turns keepalive off.
	PingInterval time.Duration
	// PingTimeout is how long a ping waits for its pong before the Conn
	// closes itself with ErrPingTimeout; 0 means DefaultPingTimeout.
	PingTimeout time.Duration
	// Dial passes options to websocket.Dial (HTTP client, headers, ...).
	Dial *websocket.DialOptions
	// Accept passes options to websocket.Accept (origins, ...).
	Accept *websocket.AcceptOptions
}

// Conn sends and receives envelopes over one WebSocket connection.
//
// Concurrency: Recv has one caller at a time (one read loop); Send,
// SendBody and SendWithin may be called from any number of goroutines, and
// messages go out whole, one at a time. Close and CloseWithError may be called from
// any goroutine, once or more. Pongs are processed inside Recv, so
// keepalive needs a goroutine that keeps calling Recv: a Conn that nobody
// reads fails its pings and closes. Canceling the context of a Recv in
// progress closes the connection (a message cannot be half read); see Send
// for its context.
type Conn struct {
	ws     *websocket.Conn
	limits Limits
	wsem   chan struct{} // one token: holder may write
	// gather, if not nil, is the socket of an accepted connection, which
	// writes a message larger than the library's write buffer at once.
	gather *gatherConn

	ctx    context.Context // canceled by close; ends keepalive
	cancel context.CancelFunc
	kaDone chan struct{}

	closeOnce sync.Once
	closeErr  error

	mu    sync.Mutex
	cause error // why this side closed, for Recv's error; guarded by mu
}

// Dial connects to a relay at url (ws:// or wss://).
func Dial(ctx context.Context, url string, opts *Options) (*Conn, error) {
	o := opts.withDefaults()
	ws, resp, err := websocket.Dial(ctx, url, o.Dial)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("transport: dial %s: HTTP %d: %w", url, resp.StatusCode, err)
		}
		return nil, fmt.Errorf("transport: dial %s: %w", url, err)
	}
	return newConn(ws, o), nil
}

// Accept upgrades an HTTP request to a Conn. On error it has already
// written an HTTP error response.
func Accept(w http.ResponseWriter, r *http.Request, opts *Options) (*Conn, error) {
	o := opts.withDefaults()
	gw := gatheringFor(w, o.Accept)
	if gw != nil {
		w = gw
	}
	ws, err := websocket.Accept(w, r, o.Accept)
	if err != nil {
		return nil, fmt.Errorf("transport: accept: %w", err)
	}
	c := newConn(ws, o)
	if gw != nil {
		c.gather = gw.gc
	}
	return c, nil
}

func (o *Options) withDefaults() Options {
	var c Options
	if o != nil {
		c = *o
	}
	c.Limits = c.Limits.WithDefaults()
	if c.PingInterval == 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.PingTimeout <= 0 {
		c.PingTimeout = DefaultPingTimeout
	}
	return c
}

func newConn(ws *websocket.Conn, o Options) *Conn {
	ws.SetReadLimit(int64(o.Limits.MaxFrame))
	ctx, cancel := context.WithCancel(context.Background())
	c := &Conn{
		ws:     ws,
		limits: o.Limits,
		wsem:   make(chan struct{}, 1),
		ctx:    ctx,
		cancel: cancel,
		kaDone: make(chan struct{}),
	}
	if o.PingInterval > 0 {
		go c.keepalive(o.PingInterval, o.PingTimeout)
	} else {
		close(c.kaDone)
	}
	return c
}

// Limits returns the limits this Conn enforces, defaults filled in.
func (c *Conn) Limits() Limits { return c.limits }

// keepalive pings every interval until Close. A ping without a pong within
// timeout means the peer or the path is gone (a NAT dropped the mapping, a
// laptop slept): close now, without a handshake nobody would answer.
func (c *Conn) keepalive(interval, timeout time.Duration) {
	defer close(c.kaDone)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(c.ctx, timeout)
		err := c.ws.Ping(ctx)
		cancel()
		switch {
		case err == nil:
			continue
		case c.ctx.Err() != nil:
			return // closing
		case errors.Is(err, context.DeadlineExceeded):
			c.setCause(ErrPingTimeout)
			_ = c.ws.CloseNow()
		}
		// Any other failure means the connection is already gone; Recv
		// reports why.
		return
	}
}

func (c *Conn) setCause(err error) {
	c.mu.Lock()
	if c.cause == nil {
		c.cause = err
	}
	c.mu.Unlock()
}

func (c *Conn) getCause() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cause
}

// Send writes e as one binary message. An encoded envelope larger than
// Limits.MaxFrame is refused with ErrTooLarge before anything is sent.
//
// ctx bounds the wait for this message's turn. Once the message has begun
// to go out it is finished whatever ctx does, because a half-sent message
// would leave the stream unreadable; a write stuck on a peer that stopped
// reading ends when keepalive gives up on the peer, or at Close. Use
// SendWithin to bound the write itself.
func (c *Conn) Send(ctx context.Context, e *Envelope) error {
	b, err := c.encode(e)
	if err != nil {
		return err
	}
	return c.write(ctx, c.ctx, b)
}

// slowCloseGrace is how long a slow consumer is given to take the close
// frame that cuts it off before its socket is closed without one.
const slowCloseGrace = time.Second

// SendWithin sends e like Send, but the peer must take it within d of the
// call, the wait for this message's turn included. A peer that does not is
// a slow consumer, and the Conn cuts it off: it closes with 4001 and the
// reason slow_consumer (no error message: the peer is not reading them),
// sending the close frame if it can get out within a second — a close
// frame may pass between the fragments of a message the peer is still
// reading — and closing the socket regardless; only a close frame already
// on its way waits longer, for the WebSocket library's own bound of 5 s.
// SendWithin then returns an error for which errors.Is holds with both
// ErrClosed and ErrSlowConsumer, as do later calls on the Conn.
//
// ctx bounds the wait for the turn as it does for Send. A d of 0 or less
// means no bound: SendWithin is then Send.
func (c *Conn) SendWithin(ctx context.Context, e *Envelope, d time.Duration) error {
	b, err := c.encode(e)
	if err != nil {
		return err
	}
	return c.sendWithin(ctx, b, d)
}

// SendEncodedWithin is SendWithin for frame, an envelope of type typ as
// Encode returns it, so that a message sent on many connections is encoded
// once. frame is only read, and may be sent on other connections at the
// same time; one over Limits.MaxFrame is refused with ErrTooLarge.
func (c *Conn) SendEncodedWithin(ctx context.Context, typ MessageType, frame []byte, d time.Duration) error {
	if len(frame) > c.limits.MaxFrame {
		return errorf(CodeTooLarge, "%s message of %d bytes exceeds max_frame %d", typ, len(frame), c.limits.MaxFrame)
	}
	return c.sendWithin(ctx, frame, d)
}

func (c *Conn) sendWithin(ctx context.Context, b []byte, d time.Duration) error {
	if d <= 0 {
		return c.write(ctx, c.ctx, b)
	}
	turn, stopWaiting := context.WithCancel(ctx)
	defer stopWaiting()
	cut := make(chan struct{})
	t := time.AfterFunc(d, func() {
		defer close(cut)
		stopWaiting()
		c.cutSlow(d)
	})
	err := c.write(turn, c.ctx, b)
	if t.Stop() {
		return err
	}
	<-cut
	if err == nil {
		// Written just as d ran out: the connection is being cut anyway.
		err = errors.New("transport: send: cut off as a slow consumer")
	}
	return c.closedErr(err)
}

// cutSlow closes the connection of a peer that did not take a message
// within d, a close frame (4001) first if one can get out.
func (c *Conn) cutSlow(d time.Duration) {
	c.setCause(errorf(CodeSlowConsumer, "peer took no message for %v", d))
	c.closeOnce.Do(func() {
		// The close frame needs the frame lock, which a write stuck on the
		// full socket holds; it gets it only if that write moves on.
		closed := make(chan struct{})
		go func() {
			defer close(closed)
			_ = c.ws.Close(CloseSlowConsumer, string(CodeSlowConsumer))
		}()
		t := time.NewTimer(slowCloseGrace)
		select {
		case <-closed:
		case <-t.C:
		}
		t.Stop()
		// Ending c.ctx ends every write in progress under it, and the
		// library closes the socket of a write whose context ends: the
		// stuck write returns, and Close above with it.
		c.cancel()
		<-c.kaDone
		<-closed
	})
}

// encode encodes e, refusing an envelope over MaxFrame.
func (c *Conn) encode(e *Envelope) ([]byte, error) {
	b, err := Encode(e)
	if err != nil {
		return nil, err
	}
	if len(b) > c.limits.MaxFrame {
		return nil, errorf(CodeTooLarge, "%s message of %d bytes exceeds max_frame %d", e.Type, len(b), c.limits.MaxFrame)
	}
	return b, nil
}

// SendBody sends body in a new envelope with id.
func (c *Conn) SendBody(ctx context.Context, id uint64, body Body) error {
	// Encoded into a buffer used again: a relay answers every request
	// with one, and the write copies the message out before it returns.
	bp := sendBufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= maxPooledSend {
			sendBufs.Put(bp)
		}
	}()
	b, err := appendBody((*bp)[:0], id, body)
	if err != nil {
		return err
	}
	*bp = b
	if len(b) > c.limits.MaxFrame {
		return errorf(CodeTooLarge, "%s message of %d bytes exceeds max_frame %d", body.MessageType(), len(b), c.limits.MaxFrame)
	}
	return c.write(ctx, c.ctx, b)
}

// sendBufs hold messages SendBody encodes, up to maxPooledSend bytes each.
var sendBufs = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledSend is the largest buffer kept for the next message: small
// answers (acks, ok) are the many, and a large one (a page of a pull)
// would hold its memory after it is sent.
const maxPooledSend = 16 << 10

// fragmentSize is the largest WebSocket frame a Conn writes. Control frames
// may come between the fragments of a message, so a long transfer does not
// hold back pings and pongs until keepalive mistakes it for a dead peer.
const fragmentSize = 32 << 10

// write waits for its turn under ctx, then writes b as one message under
// wctx. A failed write closes the connection: part of b may be out.
func (c *Conn) write(ctx, wctx context.Context, b []byte) error {
	select {
	case c.wsem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("transport: send: %w", ctx.Err())
	}
	defer func() { <-c.wsem }()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("transport: send: %w", err)
	}
	if err := c.writeFragments(wctx, b); err != nil {
		_ = c.ws.CloseNow()
		return c.closedErr(fmt.Errorf("transport: send: %w", err))
	}
	return nil
}

func (c *Conn) writeFragments(ctx context.Context, b []byte) error {
	if len(b) <= fragmentSize {
		if n := serverFrameSize(len(b)); c.gather != nil && n > serverWriteBuffer {
			c.gather.gather(n)
			err := c.ws.Write(ctx, websocket.MessageBinary, b)
			if derr := c.gather.done(err == nil); err == nil {
				err = derr
			}
			return err
		}
		return c.ws.Write(ctx, websocket.MessageBinary, b)
	}
	w, err := c.ws.Writer(ctx, websocket.MessageBinary)
	if err != nil {
		return err
	}
	for len(b) > 0 {
		n := min(len(b), fragmentSize)
		if _, err := w.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return w.Close()
}

// Recv reads the next envelope. Its body is still raw: use DecodeBody or
// Message, and answer a body that fails them with an error reply.
//
// Any error means the connection is closed, and errors.Is(err, ErrClosed)
// holds. A frame that fails Decode, a text message or a message over
// MaxFrame is a protocol violation: Recv sends an error message (bad_frame,
// too_large, unsupported_version), closes with the matching close code,
// and returns the *Error, which errors.As finds in the chain.
func (c *Conn) Recv(ctx context.Context) (*Envelope, error) {
	typ, b, err := c.read(ctx)
	if err != nil {
		if errors.Is(err, websocket.ErrMessageTooBig) {
			// The library has sent close 1009 already; finish the handshake.
			perr := errorf(CodeTooLarge, "message exceeds max_frame %d: %w", c.limits.MaxFrame, err)
			c.setCause(perr)
			_ = c.close(CloseTooBig, string(CodeTooLarge))
			return nil, fmt.Errorf("%w: %w", ErrClosed, perr)
		}
		return nil, c.closedErr(err)
	}
	if typ != websocket.MessageBinary {
		return nil, c.fail(errorf(CodeBadFrame, "text message; messages are binary msgpack"))
	}
	e, err := c.limits.decode(b, true) // b is this message's own
	if err != nil {
		return nil, c.fail(AsError(err))
	}
	return e, nil
}

// readBufs hold messages being read: a message is read into one, growing
// it as needed, then copied out at its size, which costs one allocation
// rather than the several of growing a fresh buffer to fit.
var readBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledRead is the largest buffer kept for the next message.
const maxPooledRead = 256 << 10

// read reads one whole message, as websocket.Conn.Read does.
func (c *Conn) read(ctx context.Context) (websocket.MessageType, []byte, error) {
	typ, r, err := c.ws.Reader(ctx)
	if err != nil {
		return 0, nil, err
	}
	buf := readBufs.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= maxPooledRead {
			buf.Reset()
			readBufs.Put(buf)
		}
	}()
	buf.Reset()
	if _, err := buf.ReadFrom(r); err != nil {
		return 0, nil, err
	}
	return typ, bytes.Clone(buf.Bytes()), nil
}

// fail answers a protocol violation by the peer and closes.
func (c *Conn) fail(perr *Error) error {
	c.setCause(perr)
	_ = c.CloseWithError(perr.Code, perr.Message)
	return fmt.Errorf("%w: %w", ErrClosed, perr)
}

// closedErr wraps a failed read or write: the connection is gone, and
// the cause this side recorded (ping timeout, protocol error) explains it
// better than the library's error.
func (c *Conn) closedErr(err error) error {
	if cause := c.getCause(); cause != nil {
		return fmt.Errorf("%w: %w: %w", ErrClosed, cause, err)
	}
	return fmt.Errorf("%w: %w", ErrClosed, err)
}

// sendErrorTimeout bounds the error message sent before a close: a peer
// that does not read must not hold the closing side. If it runs out, the
// library closes the connection mid-message, which is where we were going.
const sendErrorTimeout = 2 * time.Second

// CloseWithError sends an error message {code, reason} with id 0, then
// closes with the close status for code (see the close codes: ClosePolicy
// unless another fits) and code as the close reason. Use it for
// failures that end the session (auth, shutting down, slow consumer); a
// failed request gets an error reply with its id instead.
func (c *Conn) CloseWithError(code Code, reason string) error {
	// Best effort, and bounded: the peer may be the reason for closing.
	if e, err := NewEnvelope(0, &Error{Code: code, Message: reason}); err == nil {
		if b, err := Encode(e); err == nil && len(b) <= c.limits.MaxFrame {
			ctx, cancel := context.WithTimeout(c.ctx, sendErrorTimeout)
			_ = c.write(ctx, ctx, b)
			cancel()
		}
	}
	return c.close(closeCodeFor(code), string(code))
}

// Close closes the connection normally (1000) and waits for the keepalive
// goroutine. It performs the close handshake, which waits (up to 5 s, the
// library's bound) for the peer's reply. Closing again returns the first
// result.
func (c *Conn) Close() error { return c.close(CloseNormal, "") }

func (c *Conn) close(status StatusCode, reason string) error {
	c.closeOnce.Do(func() {
		c.cancel()
		<-c.kaDone
		err := c.ws.Close(status, reason)
		if err != nil && !errors.Is(err, net.ErrClosed) {
			c.closeErr = fmt.Errorf("transport: close: %w", err)
		}
	})
	return c.closeErr
}
