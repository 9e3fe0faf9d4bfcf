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
// a time, in order. A push is checked, merged and queued for its group
// commit in turn, and then waits for durability on a goroutine of its own
// while the loop reads the next request (pipelined pushes, up to
// maxPushesInFlight of them); pushes are answered in the order received.
// Any other request waits until every push before it is answered, so it
// sees them all as before. Lease waits and subscriptions also run on their
// own goroutines; the session owns all of them and waits for them.
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

	ctx    context.Context // ends when the session ends
	cancel context.CancelFunc
	busy   sync.Mutex // held while a request is handled; Shutdown waits on it
	// reply is the memory the answer to the request being handled holds
	// of the budget, released once it is sent. Only the read loop uses it.
	reply        *memGrant
	shutdownOnce sync.Once
	wg           sync.WaitGroup
	// answered is closed once the last push handed on is answered (closed
	// from the start); flight holds a token per push not yet answered.
	// Only the read loop (and shutdown, holding busy) uses answered.
	answered chan struct{}
	flight   chan struct{}
}

// maxPushesInFlight bounds the pushes one connection may have checked and
// queued, waiting for durability, before the relay reads its next request:
// what one connection can make the relay hold at once (each push within
// max_frame and max_inflated, all within the relay's memory budget).
const maxPushesInFlight = 16

// closedChan is closed: nothing to wait for.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// serve runs the session until the connection ends.
func (s *Server) serve(conn *transport.Conn) {
	sess := &session{s: s, conn: conn, subs: map[string]context.CancelFunc{}, leases: map[Coll]uint64{}, pres: newSessionPresence(s.now), answered: closedChan, flight: make(chan struct{}, maxPushesInFlight)}
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
		fail(s.tokenRefused("hello", err), err.Error())
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

// handle answers one request: a push later, once durable (pushAhead);
// any other once every push before it is answered.
func (sess *session) handle(env *transport.Envelope) {
	if env.Type == transport.TypePush {
		sess.pushAhead(env)
		return
	}
	<-sess.answered
	start := time.Now()
	body, err := sess.dispatch(env)
	sess.answer(env, start, body, err)
	sess.reply.release()
	sess.reply = nil
}

// answer sends the answer to a request (body, or err), counted in the
// metrics; a nil body with no error was sent already.
func (sess *session) answer(env *transport.Envelope, start time.Time, body transport.Body, err error) {
	s := sess.s
	if err != nil {
		body = sess.errorBody(env, err)
	}
	var code transport.Code
	if e, isErr := body.(*transport.Error); isErr {
		code = e.Code
	}
	s.metrics.request(env.Type, code, time.Since(start))
	if body != nil {
		_ = sess.conn.SendBody(sess.ctx, env.ID, body)
	}
}

// pushAhead checks, merges and queues a push, and leaves it to wait for
// its group commit on a goroutine of its own, so that the read loop takes
// the next request meanwhile. Answers go out in the order the pushes came:
// each waits for the one before. A connection has at most
// maxPushesInFlight pushes unanswered; the read loop waits for a slot
// before it reads another push's body.
func (sess *session) pushAhead(env *transport.Envelope) {
	start := time.Now()
	sess.flight <- struct{}{}
	before, done := sess.answered, make(chan struct{})
	sess.answered = done
	ps, err := sess.startPush(env, before)
	sess.wg.Add(1)
	go func() {
		defer sess.wg.Done()
		defer func() { <-sess.flight }()
		defer close(done)
		var ack *transport.Ack
		if ps != nil {
			ack, err = ps.wait()
		}
		<-before
		if err != nil {
			sess.answer(env, start, nil, err)
		} else {
			sess.answer(env, start, ack, nil)
			sess.s.acked(ps.c)
		}
	}()
}

// startPush runs a push request up to its place in the group commit
// (Server.startPush); nil and an error if it is refused before.
func (sess *session) startPush(env *transport.Envelope, before <-chan struct{}) (*pushing, error) {
	m, err := transport.DecodeBody[transport.Push](env)
	if err != nil {
		return nil, err
	}
	claims := sess.currentClaims()
	if e := sess.s.expired(claims); e != nil {
		return nil, e
	}
	return sess.push(claims, m, before)
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

func (sess *session) push(claims *Claims, m *transport.Push, before <-chan struct{}) (*pushing, error) {
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
	return sess.s.startPush(context.WithoutCancel(sess.ctx), c, m, before)
}

func (sess *session) pull(claims *Claims, m *transport.Pull) (transport.Body, error) {
	c, err := sess.coll(claims, m.Collection, false)
	if err != nil {
		return nil, err
	}
	// A page is at most a frame, held until it is sent.
	if sess.reply, err = sess.s.mem.acquire(sess.ctx, int64(sess.s.limits.MaxFrame)); err != nil {
		return nil, memErr(err, "the pull")
	}
	return sess.s.pull(sess.ctx, c, m)
}

func (sess *session) subscribe(claims *Claims, env *transport.Envelope, m *transport.Subscribe) (transport.Body, error) {
	c, err := sess.coll(claims, m.Collection, false)
	if err != nil {
		return nil, err
	}
	// The session receives the collection's presence from before the
	// answer: presence sent after a device saw its subscribe acknowledged
	// reaches it.
	leavePresence := sess.joinPresence(c)
	// Answer before streaming, so the device sees its subscribe
	// acknowledged before any live message or slow_consumer close.
	if err := sess.conn.SendBody(sess.ctx, env.ID, &transport.OK{}); err != nil {
		leavePresence()
		return nil, err
	}
	sess.startSub(c, m.Cursor, m.Early, leavePresence)
	return nil, nil
}

// reauth replaces the session's token with a fresh one of the same app.
func (sess *session) reauth(a *transport.Auth) (transport.Body, error) {
	_, claims, err := sess.s.auth.Verify(sess.app.APIKey, a.Token)
	if err != nil {
		return nil, perr(sess.s.tokenRefused("auth", err), "%v", err)
	}
	sess.mu.Lock()
	sess.claims = claims
	sess.mu.Unlock()
	return &transport.OK{}, nil
}

// tokenRefused counts and logs a token refused by Verify, saying which
// check failed (never the token), and returns the code to answer with.
func (s *Server) tokenRefused(where string, err error) transport.Code {
	s.metrics.authFailures.Inc()
	var te *TokenError
	if errors.As(err, &te) {
		s.log.Info("token refused", "in", where, "app", te.App, "check", te.Check, "err", te.Err)
	}
	if errors.Is(err, ErrTokenExpired) {
		return transport.CodeTokenExpired
	}
	return transport.CodeUnauthenticated
}

// expired returns token_expired if the session's token no longer holds:
// it has expired by the relay's clock, or the key that signed it has been
// removed (see Auth.Check). Otherwise it returns nil.
func (s *Server) expired(claims *Claims) *transport.Error {
	err := s.recheck("ws", claims)
	if err == nil {
		return nil
	}
	var te *TokenError
	if errors.As(err, &te) {
		err = te.Err
	}
	return perr(transport.CodeTokenExpired, "%v; send auth with a fresh one", err)
}

// recheck is Auth.Check by the server's clock, for a connection of the
// endpoint where. A token whose key was removed is logged; one that
// expired is not, since that is routine.
func (s *Server) recheck(where string, claims *Claims) error {
	err := s.auth.Check(claims, s.now())
	if RefusedCheck(err) == CheckKeyRemoved {
		s.log.Info("token refused", "in", where, "app", claims.app, "check", CheckKeyRemoved)
	}
	return err
}

func (sess *session) currentClaims() *Claims {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	return sess.claims
}

// startSub runs a subscription of c from cursor until it is stopped or
// replaced; leavePresence is called when it ends.
func (sess *session) startSub(c Coll, cursor uint64, early bool, leavePresence func()) {
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
		defer leavePresence()
		sess.s.subscribe(ctx, sess, c, cursor, early)
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

// shutdown ends the session once its current request, and every push it
// has in flight, is answered.
func (sess *session) shutdown() {
	sess.shutdownOnce.Do(func() {
		sess.busy.Lock()
		defer sess.busy.Unlock()
		<-sess.answered
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
