package transport

import (
	"errors"
	"fmt"
)

// Code is a stable protocol error code, carried by the error message and by
// the reason of a close frame. Codes never change meaning; new ones may be
// added, and a receiver treats an unknown code like CodeInternal.
type Code string

// Error codes. docs/protocol.md says which request can get which.
const (
	CodeBadFrame           Code = "bad_frame"           // frame is not a valid envelope or body
	CodeUnsupportedVersion Code = "unsupported_version" // no common protocol version
	CodeUnauthenticated    Code = "unauthenticated"     // bad API key or token, or no hello yet
	CodeForbidden          Code = "forbidden"           // token does not grant this collection
	CodeTokenExpired       Code = "token_expired"       // send auth with a fresh token
	CodeNotFound           Code = "not_found"           // no such collection or lease
	CodeTooLarge           Code = "too_large"           // a limit was exceeded
	CodeInvalidChange      Code = "invalid_change"      // change bytes do not load as Automerge
	CodeStaleFence         Code = "stale_fence"         // the push's fence is not the current lease
	CodeConflict           Code = "conflict"            // records changed concurrently; push again
	CodeLeaseHeld          Code = "lease_held"          // another holder has the lease
	CodeLeaseTimeout       Code = "lease_timeout"       // wait_ms passed without the lease
	CodeSlowConsumer       Code = "slow_consumer"       // live subscriber fell too far behind
	CodeRateLimited        Code = "rate_limited"        // retry after retry_ms
	CodeQuotaExceeded      Code = "quota_exceeded"      // the app's stored-bytes quota is full; nothing stored
	CodeTruncated          Code = "truncated"           // the cursor is below the log's horizon: pull from 0 and merge
	CodeBusy               Code = "busy"                // the relay's memory is in use; nothing done: retry after retry_ms
	CodeInternal           Code = "internal"            // the relay failed; retrying may help
	CodeShuttingDown       Code = "shutting_down"       // relay is stopping; reconnect elsewhere or later
)

// Error is the body of an error message and the Go error for a protocol
// failure, whether the peer reported it or this package detected it.
// errors.Is matches two *Error values by Code alone, so callers test
// errors.Is(err, transport.ErrStaleFence) and never match strings.
type Error struct {
	Code    Code   `msgpack:"code"`
	Message string `msgpack:"message"`
	// RetryMS, when non-zero, is how long the client should wait before
	// retrying (rate_limited, busy, shutting_down, lease_held).
	RetryMS uint32 `msgpack:"retry_ms,omitempty"`

	cause error // local detail, such as msgpack's own error; never sent
}

// Error implements error.
func (e *Error) Error() string {
	if e.Message == "" {
		return "transport: " + string(e.Code)
	}
	return "transport: " + string(e.Code) + ": " + e.Message
}

// Unwrap returns the local cause of an error this package detected, if any.
func (e *Error) Unwrap() error { return e.cause }

// Is reports whether target is an *Error with the same Code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// MessageType implements Body.
func (*Error) MessageType() MessageType { return TypeError }

func (e *Error) validate(*Limits) error {
	if e.Code == "" {
		return errorf(CodeBadFrame, "error without a code")
	}
	return nil
}

// Sentinels, one per code, for errors.Is. Do not modify them.
var (
	ErrBadFrame           = &Error{Code: CodeBadFrame}
	ErrUnsupportedVersion = &Error{Code: CodeUnsupportedVersion}
	ErrUnauthenticated    = &Error{Code: CodeUnauthenticated}
	ErrForbidden          = &Error{Code: CodeForbidden}
	ErrTokenExpired       = &Error{Code: CodeTokenExpired}
	ErrNotFound           = &Error{Code: CodeNotFound}
	ErrTooLarge           = &Error{Code: CodeTooLarge}
	ErrInvalidChange      = &Error{Code: CodeInvalidChange}
	ErrStaleFence         = &Error{Code: CodeStaleFence}
	ErrConflict           = &Error{Code: CodeConflict}
	ErrLeaseHeld          = &Error{Code: CodeLeaseHeld}
	ErrLeaseTimeout       = &Error{Code: CodeLeaseTimeout}
	ErrSlowConsumer       = &Error{Code: CodeSlowConsumer}
	ErrRateLimited        = &Error{Code: CodeRateLimited}
	ErrQuotaExceeded      = &Error{Code: CodeQuotaExceeded}
	ErrTruncated          = &Error{Code: CodeTruncated}
	ErrBusy               = &Error{Code: CodeBusy}
	ErrInternal           = &Error{Code: CodeInternal}
	ErrShuttingDown       = &Error{Code: CodeShuttingDown}
)

// Errors of this package that are not protocol codes.
var (
	// ErrClosed is returned by Conn and Client methods once the connection
	// is closed, by either side. It is joined with the cause (a close frame's
	// status, ErrPingTimeout, a protocol *Error) where one is known.
	ErrClosed = errors.New("transport: connection closed")
	// ErrPingTimeout is why a Conn closed itself: a keepalive ping got no
	// pong within the timeout.
	ErrPingTimeout = errors.New("transport: keepalive ping timed out")
	// ErrUnexpectedType means a message's type is not the one asked for: a
	// DecodeBody[T] on an envelope of another type, or a response to Call
	// of a type the caller did not expect.
	ErrUnexpectedType = errors.New("transport: unexpected message type")
)

// errorf builds a protocol error detected locally; a %w verb in format
// makes its operand the error's cause.
func errorf(code Code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: err.Error(), cause: errors.Unwrap(err)}
}

// AsError returns the protocol error in err's chain, or, for any other
// non-nil error, a bare internal error: its text stays out of the reply,
// since it may describe the server's insides. A server uses it to turn a
// failure into the body of an error reply.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	return &Error{Code: CodeInternal, Message: "internal error"}
}
