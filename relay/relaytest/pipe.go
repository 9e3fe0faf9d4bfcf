package relaytest

import (
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// newPipe returns the two ends of an in-memory, buffered, full-duplex
// connection. Unlike net.Pipe, a write never waits for the peer to read
// (as with TCP's buffers, within reason), so two sides that write before
// they read do not deadlock. Waits use sync.Cond, which a synctest bubble
// counts as durably blocking.
func newPipe() (net.Conn, net.Conn) {
	var mu sync.Mutex
	ab, ba := &halfPipe{mu: &mu}, &halfPipe{mu: &mu}
	ab.cond, ba.cond = sync.NewCond(&mu), sync.NewCond(&mu)
	return &pipeEnd{r: ba, w: ab, mu: &mu}, &pipeEnd{r: ab, w: ba, mu: &mu}
}

// halfPipe is one direction: bytes written and not yet read.
type halfPipe struct {
	mu     *sync.Mutex
	cond   *sync.Cond
	buf    []byte
	closed bool // the writer closed: reads drain buf, then EOF
}

type pipeEnd struct {
	r, w *halfPipe
	mu   *sync.Mutex

	// Guarded by mu.
	closed        bool
	readDeadline  time.Time
	writeDeadline time.Time
	timer         *time.Timer
}

func (p *pipeEnd) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		switch {
		case p.closed:
			return 0, net.ErrClosed
		case len(p.r.buf) > 0:
			n := copy(b, p.r.buf)
			p.r.buf = p.r.buf[n:]
			return n, nil
		case p.r.closed:
			return 0, io.EOF
		case !p.readDeadline.IsZero() && !time.Now().Before(p.readDeadline):
			return 0, os.ErrDeadlineExceeded
		}
		p.r.cond.Wait()
	}
}

func (p *pipeEnd) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return 0, net.ErrClosed
	case p.w.closed:
		return 0, io.ErrClosedPipe
	case !p.writeDeadline.IsZero() && !time.Now().Before(p.writeDeadline):
		return 0, os.ErrDeadlineExceeded
	}
	p.w.buf = append(p.w.buf, b...)
	p.w.cond.Broadcast()
	return len(b), nil
}

func (p *pipeEnd) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	p.w.closed = true // the peer reads what is left, then EOF
	p.r.closed = true // the peer's writes fail
	p.r.buf = nil
	if p.timer != nil {
		p.timer.Stop()
	}
	p.w.cond.Broadcast()
	p.r.cond.Broadcast()
	return nil
}

func (p *pipeEnd) LocalAddr() net.Addr  { return pipeAddr{} }
func (p *pipeEnd) RemoteAddr() net.Addr { return pipeAddr{} }

func (p *pipeEnd) SetDeadline(t time.Time) error {
	p.SetReadDeadline(t)
	return p.SetWriteDeadline(t)
}

func (p *pipeEnd) SetReadDeadline(t time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.readDeadline = t
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	if !t.IsZero() {
		// Wake the reader at the deadline so it sees it has passed.
		p.timer = time.AfterFunc(time.Until(t), func() {
			p.mu.Lock()
			p.r.cond.Broadcast()
			p.mu.Unlock()
		})
	}
	p.r.cond.Broadcast()
	return nil
}

func (p *pipeEnd) SetWriteDeadline(t time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.writeDeadline = t // writes never wait, so only a past deadline matters
	return nil
}
