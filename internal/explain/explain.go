// Package explain renders an error for the person at a terminal: one
// sentence saying what went wrong and, where it is known, what to do,
// instead of every layer's wrapping of the same failure. The error itself
// is untouched, so code keeps testing it with errors.Is and errors.As; only
// what is printed changes.
package explain

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/transport"
)

// Error renders err: the context its outermost layer added (such as
// "sync with ws://host/ws: "), then a sentence for the cause that matters
// most in its chain. An error with no cause it knows is printed whole.
func Error(err error) string {
	if err == nil {
		return ""
	}
	cause, sentence := describe(err)
	if cause == nil {
		return dropPrefixes(err.Error())
	}
	if l, ok := cause.(*badgerdir.LockedError); ok {
		// Its sentence says "the store": every layer's context is needed
		// to say which (the command, the folder), and where none names
		// the folder, the sentence does.
		ctx := fullContext(err, cause)
		if !strings.Contains(ctx, l.Dir) {
			sentence = strings.Replace(sentence, "the store", "the store in "+l.Dir, 1)
		}
		return dropPrefixes(ctx + sentence)
	}
	return dropPrefixes(outerContext(err, cause) + sentence)
}

// dropPrefixes removes the "ferry: " that Ferry's sentinel errors and
// wrapping layers begin with: the program printing the message names
// itself once, and "ferry: ferry: record not found" says nothing more.
func dropPrefixes(s string) string {
	s = strings.TrimPrefix(s, "ferry: ")
	return strings.ReplaceAll(s, ": ferry: ", ": ")
}

// damageHelp is where a damaged store's owner reads what to do.
const damageHelp = `see "When a store is damaged" in docs/operations.md`

// describe finds the best-understood cause in err's chain and words it.
func describe(err error) (error, string) {
	var locked *badgerdir.LockedError
	if errors.As(err, &locked) {
		return locked, locked.Error()
	}
	var damaged *badgerdir.DamagedError
	if errors.As(err, &damaged) {
		// Badger's wording of the cause ("manifest has bad magic") helps
		// no one at a terminal; the problem in Ferry's words does.
		s := fmt.Sprintf("the store in %s is damaged: %s", damaged.Dir, damaged.Problem)
		if damaged.Untouched {
			s += "; nothing in it was changed"
		}
		return damaged, s + "; " + damageHelp
	}
	var foreign *badgerdir.ForeignError
	if errors.As(err, &foreign) {
		return foreign, fmt.Sprintf("%s is not a Ferry store: it holds %q, which is none of a store's files; nothing in it was changed (give a new or empty folder)", foreign.Dir, foreign.File)
	}
	var perr *transport.Error
	if errors.As(err, &perr) {
		return perr, protocol(perr)
	}
	if errors.Is(err, transport.ErrPingTimeout) {
		return transport.ErrPingTimeout, "the relay stopped answering (keepalive ping timed out)"
	}
	if st := transport.CloseStatus(err); st != -1 {
		return err, fmt.Sprintf("the relay closed the connection (WebSocket status %d)", int(st))
	}
	var pgc *pgconn.ConnectError
	if errors.As(err, &pgc) {
		// Checked before the network causes below, which would blame
		// the relay for the database.
		return pgc, "cannot connect to the PostgreSQL database: " + database(pgc.Unwrap())
	}
	var verr *tls.CertificateVerificationError
	if errors.As(err, &verr) {
		return verr, "the relay's TLS certificate is not trusted: " + certProblem(verr.Err)
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return dns, fmt.Sprintf("cannot find the host %q (%s)", dns.Name, dns.Err)
	}
	var op *net.OpError
	if errors.As(err, &op) && errors.Is(err, syscall.ECONNREFUSED) {
		return op, fmt.Sprintf("nothing accepts connections at %s: is the relay running, and is that its address?", op.Addr)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return context.DeadlineExceeded, "timed out"
	}
	return nil, ""
}

// database words why a connection to PostgreSQL failed.
func database(err error) string {
	var op *net.OpError
	var pg *pgconn.PgError
	switch {
	case errors.As(err, &pg):
		return pg.Message // "password authentication failed for user ..."
	case errors.As(err, &op) && errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("nothing accepts connections at %s: is PostgreSQL running, and is that its address?", op.Addr)
	case errors.As(err, &op) && op.Net == "unix" && errors.Is(err, syscall.ENOENT):
		return fmt.Sprintf("no socket at %s: is PostgreSQL running, and is that its socket folder?", op.Addr)
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	case err == nil:
		return "no reason given"
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// protocol words an error the relay answered with, or that this side
// detected in what the relay sent.
func protocol(e *transport.Error) string {
	s, ok := codeSentences[e.Code]
	if !ok {
		s = fmt.Sprintf("the relay answered %q", e.Code)
	}
	if d := detail(e); d != "" && !strings.Contains(s, d) {
		s += ": " + d
	}
	return s
}

var codeSentences = map[transport.Code]string{
	transport.CodeBadFrame:           "a malformed message was refused",
	transport.CodeUnsupportedVersion: "the relay speaks another protocol version",
	transport.CodeUnauthenticated:    "the relay refused the API key or token",
	transport.CodeForbidden:          "the token does not grant this",
	transport.CodeTokenExpired:       "the access token has expired; get a fresh one",
	transport.CodeNotFound:           "not found on the relay",
	transport.CodeTooLarge:           "too large for the relay's limits",
	transport.CodeInvalidChange:      "the relay refused a change that is not valid Automerge",
	transport.CodeStaleFence:         "the collection's lease passed to another device",
	transport.CodeLeaseHeld:          "another device holds the collection's lease; try again later",
	transport.CodeLeaseTimeout:       "waited too long for the collection's lease",
	transport.CodeSlowConsumer:       "this device fell too far behind the live changes",
	transport.CodeRateLimited:        "the relay asks to slow down; try again later",
	transport.CodeInternal:           "the relay failed (internal error); trying again may help",
	transport.CodeShuttingDown:       "the relay is shutting down; try again shortly",
}

// detail is the error's message without the prefixes the relay puts on
// it: its package and the code, which the sentence already says.
func detail(e *transport.Error) string {
	d := strings.TrimPrefix(e.Message, "relay: ")
	for _, prefix := range []string{string(e.Code), strings.ReplaceAll(string(e.Code), "_", " ")} {
		d = strings.TrimPrefix(d, prefix+": ")
		if d == prefix {
			d = ""
		}
	}
	return d
}

func certProblem(err error) string {
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var inv x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		return "it is signed by an authority this machine does not know"
	case errors.As(err, &hn):
		return hn.Error()
	case errors.As(err, &inv):
		return inv.Error()
	}
	return err.Error()
}

// outerContext is the text err's outermost layer put before the rest of
// its chain ("sync with ws://host/ws: "), or "" when err is the cause
// itself or its layer does not read that way.
func outerContext(err, cause error) string {
	if err == cause {
		return ""
	}
	inner := errors.Unwrap(err)
	if inner == nil {
		return ""
	}
	prefix, ok := strings.CutSuffix(err.Error(), inner.Error())
	if !ok {
		return ""
	}
	return prefix
}

// fullContext is all the text err's layers put before cause's own.
func fullContext(err, cause error) string {
	full, own := err.Error(), cause.Error()
	if i := strings.LastIndex(full, own); i > 0 {
		return full[:i]
	}
	return ""
}
