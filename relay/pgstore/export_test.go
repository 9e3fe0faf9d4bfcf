package pgstore

import (
	"context"
	"net"
	"time"
)

// SetDial makes the store dial its connections with d.
func SetDial(o *Options, d func(ctx context.Context, network, addr string) (net.Conn, error)) {
	o.dial = d
}

// SetLocalClock gives the store a local clock other than time.Now.
func SetLocalClock(o *Options, f func() time.Time) { o.localClock = f }

// Retryable is retryable: why an error may be retried, "" if not.
func Retryable(err error) string { return retryable(err) }

// SetClockInterval sets how often a store opened from now on reads the
// database's clock again, and f to call after each reading (nil: none),
// and returns a func that sets both back.
func SetClockInterval(d time.Duration, f func()) (restore func()) {
	old, oldF := clockInterval, clockRead
	clockInterval, clockRead = d, f
	return func() { clockInterval, clockRead = old, oldF }
}
