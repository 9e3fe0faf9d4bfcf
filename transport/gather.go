package transport

import (
	"bufio"
	"net"
	"net/http"
	"sync"

	"github.com/coder/websocket"
)

// serverWriteBuffer is the size of the buffer the WebSocket library writes
// an accepted connection's frames through, which flushes it to the socket
// each time it fills: a message larger would take several writes.
const serverWriteBuffer = 4 << 10

// gatherConn is an accepted connection's socket as the WebSocket library
// writes to it. While a message larger than the library's write buffer is
// on its way (gather), the pieces the buffer flushes are held and written
// together once the whole frame is in: one system call per message, not
// one per 4 KiB. A relay's live messages and pages are often a few times
// that, and each write on a socket costs about what writing the message
// does. Everything else goes straight to the socket, in the order
// written: bytes are held only until the frame's size is reached, so a
// control frame the library writes between gather and the frame (a pong)
// only makes that message go out in two writes, in order.
type gatherConn struct {
	net.Conn

	mu   sync.Mutex
	want int     // bytes still to hold before writing them all; 0: none
	held *[]byte // what is held, from gatherBufs
}

// gatherBufs hold frames being gathered, up to a frame of fragmentSize.
var gatherBufs = sync.Pool{New: func() any { b := make([]byte, 0, fragmentSize+16); return &b }}

// Write is called by the library for one frame's bytes at a time (it
// writes a frame whole under its own lock), so calls never overlap.
func (g *gatherConn) Write(p []byte) (int, error) {
	g.mu.Lock()
	if g.want == 0 {
		g.mu.Unlock()
		return g.Conn.Write(p)
	}
	*g.held = append(*g.held, p...)
	if g.want -= min(len(p), g.want); g.want > 0 {
		g.mu.Unlock()
		return len(p), nil
	}
	held := g.held
	g.held = nil
	g.mu.Unlock()
	_, err := g.Conn.Write(*held)
	putGatherBuf(held)
	return len(p), err
}

// gather holds the next n bytes written, a frame of n bytes, and writes
// them at once. The frame's write must follow, and done after it.
func (g *gatherConn) gather(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.want = n
	g.held = gatherBufs.Get().(*[]byte)
}

// done ends a gather once the frame's write returned, with written true
// if it succeeded. Bytes still held then mean the frame was smaller than
// gather was told (a library that frames differently): they are written
// now, as they must not be lost. Held after a failed write, they are
// dropped: the connection is closed.
func (g *gatherConn) done(written bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.want = 0
	if g.held == nil {
		return nil
	}
	held := g.held
	g.held = nil
	defer putGatherBuf(held)
	if !written || len(*held) == 0 {
		return nil
	}
	_, err := g.Conn.Write(*held)
	return err
}

func putGatherBuf(b *[]byte) {
	if cap(*b) <= fragmentSize+16 {
		*b = (*b)[:0]
		gatherBufs.Put(b)
	}
}

// serverFrameSize is the size of an unmasked, uncompressed frame (as a
// server writes) carrying n bytes.
func serverFrameSize(n int) int {
	switch {
	case n <= 125:
		return 2 + n
	case n <= 0xffff:
		return 4 + n
	}
	return 10 + n
}

// gatheringWriter is the http.ResponseWriter that Accept hands the
// WebSocket library: its Hijack gives the library a write buffer over a
// gatherConn.
type gatheringWriter struct {
	http.ResponseWriter
	hj http.Hijacker
	gc *gatherConn // set by Hijack
}

// WriteHeaderNow passes the library's call on to a writer that buffers
// the upgrade response until told (gin's), as it would without the
// wrapper.
func (w *gatheringWriter) WriteHeaderNow() {
	if hn, ok := w.ResponseWriter.(interface{ WriteHeaderNow() }); ok {
		hn.WriteHeaderNow()
	}
}

// Unwrap lets http.ResponseController reach the writer wrapped.
func (w *gatheringWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *gatheringWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := w.hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	// The server's own buffer has nothing for the connection any more
	// (Hijack flushed the upgrade response); flushed anyway, in case.
	if err := brw.Writer.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	w.gc = &gatherConn{Conn: conn}
	return conn, bufio.NewReadWriter(brw.Reader, bufio.NewWriterSize(w.gc, serverWriteBuffer)), nil
}

// gatheringFor wraps w for websocket.Accept with opts, or returns nil if
// w cannot be hijacked or frames may be compressed (their size is then
// not known before they are written).
func gatheringFor(w http.ResponseWriter, opts *websocket.AcceptOptions) *gatheringWriter {
	if opts != nil && opts.CompressionMode != websocket.CompressionDisabled {
		return nil
	}
	rw := w
	for {
		switch t := rw.(type) {
		case http.Hijacker:
			return &gatheringWriter{ResponseWriter: w, hj: t}
		case interface{ Unwrap() http.ResponseWriter }:
			rw = t.Unwrap()
		default:
			return nil
		}
	}
}
