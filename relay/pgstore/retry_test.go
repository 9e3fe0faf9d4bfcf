package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferrysync/ferry/internal/pgtest"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/pgstore"
)

// outage makes the database unreachable on demand: new connections are
// refused, and the open ones break at their next read or write.
type outage struct{ down atomic.Bool }

func (o *outage) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if o.down.Load() {
		return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &outageConn{Conn: c, o: o}, nil
}

type outageConn struct {
	net.Conn
	o *outage
}

func (c *outageConn) Read(p []byte) (int, error) {
	if c.o.down.Load() {
		c.Conn.Close()
		return 0, io.ErrUnexpectedEOF
	}
	return c.Conn.Read(p)
}

func (c *outageConn) Write(p []byte) (int, error) {
	if c.o.down.Load() {
		c.Conn.Close()
		return 0, net.ErrClosed
	}
	return c.Conn.Write(p)
}

// Retries are bounded: while the database stays out of reach, an Append
// fails once RetryTimeout has passed, is counted as a failure, and leaves
// nothing behind; once the database is back, the same append goes through
// as the log's first entry.
func TestRetriesAreBounded(t *testing.T) {
	var o outage
	opts := pgstore.Options{RetryTimeout: time.Second}
	pgstore.SetDial(&opts, o.dial)
	s := open(t, pgtest.Schema(t), &opts)
	e := newEntry("a", nil, "1")

	o.down.Store(true)
	_, err := s.Append(bg(), coll, 0, time.Now(), []relay.Entry{e})
	if err == nil {
		t.Fatal("Append succeeded with the database out of reach")
	}
	if errors.Is(err, relay.ErrStaleFence) || errors.As(err, new(*relay.ConflictError)) {
		t.Fatalf("Append failed as %v: a refusal, where the database was out of reach", err)
	}
	if n := counter(t, s, "ferry_postgres_failures_total", map[string]string{"op": "append"}); n != 1 {
		t.Fatalf("%v append failures counted, want 1", n)
	}
	if n := counter(t, s, "ferry_postgres_retries_total", map[string]string{"op": "append"}); n < 1 {
		t.Fatalf("%v append retries counted: it was not retried", n)
	}

	o.down.Store(false)
	head, err := s.Append(bg(), coll, 0, time.Now(), []relay.Entry{e})
	if err != nil {
		t.Fatalf("Append once the database is back: %v", err)
	}
	if head != 1 {
		t.Fatalf("head %d, want 1: the failed append left something behind", head)
	}
	checkLog(t, s, coll, 1)
}

// What the server rolled back, or never received, is retried; what it
// refused is not.
func TestRetryableErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&pgconn.PgError{Code: "40001"}, "serialization"},
		{&pgconn.PgError{Code: "40P01"}, "deadlock"},
		{&pgconn.PgError{Code: "57P01"}, "server"},
		{&pgconn.PgError{Code: "08006"}, "connection"},
		{fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: "40001"}), "serialization"},
		{io.ErrUnexpectedEOF, "connection"},
		{&pgconn.PgError{Code: "23505"}, ""}, // unique violation: a bug, not a blip
		{&pgconn.PgError{Code: "42P01"}, ""}, // undefined table
		{context.Canceled, ""},
		{errors.New("something else"), ""},
	} {
		if got := pgstore.Retryable(tc.err); got != tc.want {
			t.Errorf("retryable(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
