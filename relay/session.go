package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ferrysync/ferry/transport"
)

// session is one device connection. Its read loop handles requests one at
// a time, in order, so a device that pipelines pushes sees them applied in
// the order sent. Only lease waits and subscriptions run on their own
// goroutines, which the session owns and waits for.
type session struct {
	s      *Server
	conn   *transport.Conn
	app    App
	holder string // lease holder identity: see holderID
	peer   string // the device's replica ID: its name in presence
	pres   *sessionPresence

	mu       sync.Mutex
	claims   *Claims
	subs     map[string]context.CancelFunc
	leases   map[Coll]uint64
	stopping bool

	ctx          context.Context // ends when the session ends
	cancel       context.CancelFunc
	busy         sync.Mutex // held while a request is handled; Shutdown waits on it
	shutdownOnce sync.Once
	wg           sync.WaitGroup
}

// serve runs the session until the connection ends.
func (s *Server) serve(conn *transport.Conn) {
	sess := &session{s: s, conn: conn, subs: map[string]context.CancelFunc{}, leases: map[Coll]uint64{}, pres: newSessionPresence(s.now)}
	sess.ctx, sess.cancel = context.WithCancel(context.Background())
	if !s.track(sess) {
		sess.end(transport.CodeShuttingDown, "relay is shutting down")
		conn.Close()
		if s.hooks.sessionEnded != nil {
			s.hooks.sessionEnded()
		}
		return
	}
	defer func() {
		sess.cancel()
		sess.wg.Wait()
		sess.presenceGone()
		sess.releaseLeases()
		s.quotas.disconnect(sess.app.ID)
		conn.Close()
		if s.hooks.sessionEnded != nil {
			s.hooks.sessionEnded()
		}
		s.untrack(sess) // last: Shutdown and Close wait for this
	}()
	if !sess.hello() {
		return
	}
	s.log.Debug("session started", "app", sess.app.ID, "holder", sess.holder)
	for {
		env, err := conn.Recv(sess.ctx)
		if err != nil {
			return
		}
		sess.busy.Lock()
		if sess.isStopping() {
			sess.busy.Unlock()
			return
		}
		sess.handle(env)
		sess.busy.Unlock()
	}
}

// hello authenticates the session; it reports whether the session may go on.
func (sess *session) hello() bool {
	s := sess.s
	ctx, cancel := context.WithTimeout(sess.ctx, s.opts.HelloTimeout)
	env, err := sess.conn.Recv(ctx)
	cancel()
	if err != nil {
		return false
	}
	// Counted like any request, so refused hellos show in the metrics.
	start, refused := time.Now(), transport.Code("")
	defer func() { s.metrics.request(transport.TypeHello, refused, time.Since(start)) }()
	fail := func(code transport.Code, reason string) { refused = code; sess.end(code, reason) }
	h, err := transport.DecodeBody[transport.Hello](env)
	if err != nil {
		if errors.Is(err, transport.ErrUnexpectedType) {
			fail(transport.CodeUnauthenticated, "the first message must be hello")
		} else {
			fail(transport.CodeBadFrame, err.Error())
		}
		return false
	}
	v, ok := transport.Negotiate(h.Versions)
	if !ok {
		fail(transport.CodeUnsupportedVersion, fmt.Sprintf("relay speaks versions %v", transport.SupportedVersions()))
		return false
	}
	app, claims, err := s.auth.Verify(h.APIKey, h.Token)
	if err != nil {
		s.metrics.authFailures.Inc()
		code := transport.CodeUnauthenticated
		if errors.Is(err, ErrTokenExpired) {
			code = transport.CodeTokenExpired
		}
		fail(code, err.Error())
		return false
	}
	if h.ReplicaID == "" || len(h.ReplicaID) > 128 || !utf8.ValidString(h.ReplicaID) {
		fail(transport.CodeBadFrame, "replica_id must be 1 to 128 bytes of UTF-8")
		return false
	}
	if e := s.quotas.connect(app.ID); e != nil {
		fail(e.Code, e.Message)
		return false
	}
	sess.app, sess.claims = app, claims // the connection counts until the session ends
	sess.holder = holderID(claims.Subject, h.ReplicaID)
	sess.peer = h.ReplicaID
	w := &transport.Welcome{Version: v, RelayID: s.opts.RelayID, Incarnation: s.store.Incarnation(), Limits: s.limits}
	return sess.conn.SendBody(sess.ctx, env.ID, w) == nil
}

// handle answers one request.
func (sess *session) handle(env *transport.Envelope) {
	s := sess.s
	start := time.Now()
	body, err := sess.dispatch(env)
	if err != nil {
		body = sess.errorBody(env, err)
	}
	result := "ok"
	if e, isErr := body.(*transport.Error); isErr {
		result = string(e.Code)
	}
	s.metrics.requests.WithLabelValues(string(env.Type), result).Inc()
	s.metrics.latency.WithLabelValues(string(env.Type)).Observe(time.Since(start).Seconds())
	if body != nil {
		_ = sess.conn.SendBody(sess.ctx, env.ID, body)
	}
}

func (sess *session) errorBody(env *transport.Envelope, err error) *transport.Error {
	var e *transport.Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.Canceled) && sess.s.isShuttingDown() {
		return &transport.Error{Code: transport.CodeShuttingDown, Message: "relay is shutting down"}
	}
	sess.s.log.Error("request failed", "type", env.Type, "app", sess.app.ID, "err", err)
	return transport.AsError(err) // internal, without server details
}

// dispatch runs a request and returns the response body (nil: sent later).
func (sess *session) dispatch(env *transport.Envelope) (transport.Body, error) {
	msg, err := env.Message()
	if err != nil {
		return nil, err
	}
	if a, ok := msg.(*transport.Auth); ok {
		return sess.reauth(a)
	}
	claims := sess.currentClaims()
	if e := sess.s.expired(claims); e != nil {
		return nil, e
	}
	switch m := msg.(type) {
	case *transport.Push:
		return sess.push(claims, m)
	case *transport.Pull:
		return sess.pull(claims, m)
	case *transport.Subscribe:
		return sess.subscribe(claims, env, m)
	case *transport.Unsubscribe:
		sess.stopSub(m.Collection)
		return &transport.OK{}, nil
	case *transport.LeaseAcquire:
		return sess.acquireLease(claims, env, m)
	case *transport.LeaseRenew:
		return sess.renewLease(claims, m)
	case *transport.LeaseRelease:
		return sess.releaseLease(claims, m)
	case *transport.Presence:
		return sess.presence(claims, m)
	}
	return nil, perr(transport.CodeBadFrame, "%s is not a request", env.Type)
}

// coll returns the session's app's collection name, if claims grant
// writing it (write) or reading it.
func (sess *session) coll(claims *Claims, name string, write bool) (Coll, error) {
	if write && !claims.CanWrite(name) || !write && !claims.CanRead(name) {
		verb := "read"
		if write {
			verb = "write"
		}
		return Coll{}, perr(transport.CodeForbidden, "token does not grant %s on %q", verb, name)
	}
	return Coll{Tenant: sess.app.ID, Collection: name}, nil
}

// The handlers below answer one request type each, for a session whose
// token (claims) has not expired: each checks that the token grants the
// collection, then runs the request.

func (sess *session) push(claims *Claims, m *transport.Push) (transport.Body, error) {
	c, err := sess.coll(claims, m.Collection, true)
	if err != nil {
		return nil, err
	}
	for _, r := range m.Records {
		sess.s.metrics.bytesIn.Add(float64(len(r.Data)))
	}
	// The store checks that the fence is the collection's live lease; this
	// checks that the lease is this session's. Fences are sequential, so
	// any device could otherwise send the holder's.
	if m.Fence != 0 && !sess.holds(c, m.Fence) {
		return nil, perr(transport.CodeStaleFence, "fence %d is not a lease of %q that this connection holds", m.Fence, m.Collection)
	}
	// A push, once started, finishes and is acknowledged even if the
	// relay begins shutting down.
	return sess.s.pushCounted(context.WithoutCancel(sess.ctx), c, m)
}

func (sess *session) pull(claims *Claims, m *transport.Pull) (transport.Body, error) {
	c, err := sess.coll(claims, m.Collection, false)
	if err != nil {
		return nil, err
	}
	return sess.s.pull(sess.ctx, c, m)
}

func (sess *session) subscribe(claims *Claims, env *transport.Envelope, m *transport.Subscribe) (transport.Body, error) {
	c, err := sess.coll(claims, m.Collection, false)
	if err != nil {
		return nil, err
	}
	// Answer before streaming, so the device sees its subscribe
	// acknowledged before any live message or slow_consumer close.
	if err := sess.conn.SendBody(sess.ctx, env.ID, &transport.OK{}); err != nil {
		return nil, err
	}
	sess.startSub(c, m.Cursor)
	return nil, nil
}

// reauth replaces the session's token with a fresh one of the same app.
func (sess *session) reauth(a *transport.Auth) (transport.Body, error) {
	_, claims, err := sess.s.auth.Verify(sess.app.APIKey, a.Token)
	if err != nil {
		sess.s.metrics.authFailures.Inc()
		if errors.Is(err, ErrTokenExpired) {
			return nil, perr(transport.CodeTokenExpired, "%v", err)
		}
		return nil, perr(transport.CodeUnauthenticated, "%v", err)
	}
	sess.mu.Lock()
	sess.claims = claims
	sess.mu.Unlock()
	return &transport.OK{}, nil
}

// expired returns token_expired if claims have expired by the relay's
// clock, or nil.
func (s *Server) expired(claims *Claims) *transport.Error {
	if claims.Expired(s.now()) {
		return perr(transport.CodeTokenExpired, "token expired at %s; send auth with a fresh one", claims.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return nil
}

func (sess *session) currentClaims() *Claims {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.claims
}

func (sess *session) startSub(c Coll, cursor uint64) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if cancel, ok := sess.subs[c.Collection]; ok {
		cancel() // resubscribing restarts from the new cursor
	}
	ctx, cancel := context.WithCancel(sess.ctx)
	sess.subs[c.Collection] = cancel
	sess.wg.Add(1)
	go func() {
		defer sess.wg.Done()
		sess.s.subscribe(ctx, sess, c, cursor)
	}()
}

func (sess *session) stopSub(name string) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if cancel, ok := sess.subs[name]; ok {
		cancel()
		delete(sess.subs, name)
	}
}

func (sess *session) isStopping() bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.stopping
}

// end closes the session with an error code the device can act on. It
// reports whether this call ended it (false: it was ending already), so
// that an ending is counted once.
func (sess *session) end(code transport.Code, reason string) bool {
	sess.mu.Lock()
	first := !sess.stopping
	sess.stopping = true
	sess.mu.Unlock()
	// Close first: canceling ctx while the read loop waits would drop the
	// connection before the device learns why.
	_ = sess.conn.CloseWithError(code, reason)
	sess.cancel()
	return first
}

// shutdown ends the session once its current request is answered.
func (sess *session) shutdown() {
	sess.shutdownOnce.Do(func() {
		sess.busy.Lock()
		defer sess.busy.Unlock()
		sess.end(transport.CodeShuttingDown, "relay is shutting down")
	})
}

// cut ends the session now, canceling the request it is handling.
func (sess *session) cut() {
	sess.end(transport.CodeShuttingDown, "relay is shutting down")
}

func perr(code transport.Code, format string, args ...any) *transport.Error {
	return &transport.Error{Code: code, Message: fmt.Sprintf(format, args...)}
}
