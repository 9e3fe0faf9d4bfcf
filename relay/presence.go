package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/time/rate"

	"github.com/ferrysync/ferry/transport"
)

// Presence is who is looking at a record and where: ephemeral state that
// the relay passes on and never stores or logs. A device's presence goes
// to the other sessions subscribed to the collection (their tokens may
// read it: subscribing checked) and, as automerge-repo ephemeral
// messages, to the automerge-repo clients syncing the record; theirs
// comes back the same way. A peer that leaves (says goodbye, or whose
// connection ends) is announced with a goodbye made by the relay.

// Presence limits per device session: beyond them the relay answers
// rate_limited or too_large, and passes nothing on.
const (
	presenceRate    = 20  // messages a second, on average...
	presenceBurst   = 40  // ...in bursts of up to this many
	presenceRecords = 256 // records (and collections) one session is present on
	presenceQueue   = 256 // messages waiting for one receiver; then dropped
)

// presenceDecMode checks that presence data is one well-formed CBOR item
// within the limits automerge-repo clients need: hostile CBOR costs the
// relay nothing but the check.
var presenceDecMode = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		MaxNestedLevels:  16,
		MaxArrayElements: 1024,
		MaxMapPairs:      256,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

// goodbye is the presence message saying a peer left, in the encoding of
// automerge-repo's Presence.
var goodbye = func() []byte {
	b, err := cbor.Marshal(map[string]any{"__presence": map[string]any{"type": "goodbye"}})
	if err != nil {
		panic(err)
	}
	return b
}()

// presenceMsg is a presence message on its way, with what automerge-repo
// clients need to drop duplicates: the sender's session and a count that
// grows within it.
type presenceMsg struct {
	p       transport.Presence
	session string
	count   uint64
}

// presenceSink receives the presence of a collection: a device session
// subscribed to it, or an automerge-repo connection syncing it. deliver
// must not block.
type presenceSink interface {
	deliverPresence(m *presenceMsg)
	// fromAutomergeRepo reports whether the sink is an automerge-repo
	// connection: those pass ephemeral messages among themselves already.
	fromAutomergeRepo() bool
}

// presenceHub holds, per collection, the sinks that receive its presence.
// On a store shared by several relay processes (StorePresence), what this
// relay's sinks publish also goes to the others, through a bounded queue,
// and what they publish comes back as store events.
type presenceHub struct {
	mu      sync.Mutex
	rooms   map[Coll]map[presenceSink]int // a sink may join twice (resubscribing)
	remote  chan remotePresence           // nil unless forwarding to a store
	log     *slog.Logger
	sent    prometheus.Counter
	dropped prometheus.Counter
}

// remotePresence is a presence message for the other relay processes.
type remotePresence struct {
	c   Coll
	msg []byte
}

// storedPresence is how a presence message travels between relays.
type storedPresence struct {
	Record  string `msgpack:"r"`
	Peer    string `msgpack:"p"`
	Data    []byte `msgpack:"d"`
	Session string `msgpack:"s"`
	Count   uint64 `msgpack:"n"`
}

func newPresenceHub(reg prometheus.Registerer, log *slog.Logger) (*presenceHub, error) {
	h := &presenceHub{
		rooms: map[Coll]map[presenceSink]int{},
		log:   log,
		sent:  prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_presence_sent_total", Help: "Presence messages passed on to a receiver."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_presence_dropped_total",
			Help: "Presence messages dropped because their receiver was behind."}),
	}
	for _, c := range []prometheus.Collector{h.sent, h.dropped} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// join makes s receive c's presence until leave is called.
func (h *presenceHub) join(c Coll, s presenceSink) (leave func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.rooms[c] == nil {
		h.rooms[c] = map[presenceSink]int{}
	}
	h.rooms[c][s]++
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.rooms[c][s]--; h.rooms[c][s] <= 0 {
			delete(h.rooms[c], s)
		}
		if len(h.rooms[c]) == 0 {
			delete(h.rooms, c)
		}
	}
}

// publish passes m to c's sinks but from, and to the other relay
// processes on the store.
func (h *presenceHub) publish(c Coll, m *presenceMsg, from presenceSink) {
	h.local(c, m, from)
	h.mu.Lock()
	remote := h.remote
	h.mu.Unlock()
	if remote == nil {
		return
	}
	b, err := msgpack.Marshal(&storedPresence{Record: m.p.Record, Peer: m.p.Peer, Data: m.p.Data, Session: m.session, Count: m.count})
	if err != nil || len(b) > MaxStorePresence {
		return
	}
	select {
	case remote <- remotePresence{c, b}:
	default:
		h.dropped.Inc()
	}
}

// forward sends what this relay's sinks publish to the store until ctx
// ends; the returned channel is closed then.
func (h *presenceHub) forward(ctx context.Context, sp StorePresence) <-chan struct{} {
	remote := make(chan remotePresence, presenceQueue)
	h.mu.Lock()
	h.remote = remote
	h.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			h.mu.Lock()
			h.remote = nil
			h.mu.Unlock()
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case r := <-remote:
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := sp.PublishPresence(pctx, r.c, r.msg)
				cancel()
				if err != nil && ctx.Err() == nil {
					h.dropped.Inc()
					h.log.Debug("passing presence to the other relays failed", "err", err)
				}
			}
		}
	}()
	return done
}

// fromStore passes presence another relay process published to this
// relay's sinks.
func (h *presenceHub) fromStore(c Coll, b string) {
	var sp storedPresence
	if len(b) > MaxStorePresence || msgpack.Unmarshal([]byte(b), &sp) != nil {
		return
	}
	m := &presenceMsg{session: sp.Session, count: sp.Count}
	m.p = transport.Presence{Collection: c.Collection, Record: sp.Record, Peer: sp.Peer, Data: sp.Data}
	if m.p.Peer == "" || len(m.p.Peer) > transport.MaxPeerID || len(m.p.Data) == 0 || len(m.p.Data) > transport.MaxPresenceData {
		return
	}
	h.local(c, m, nil)
}

// local passes m to c's sinks in this relay but from.
func (h *presenceHub) local(c Coll, m *presenceMsg, from presenceSink) {
	h.mu.Lock()
	sinks := make([]presenceSink, 0, len(h.rooms[c]))
	for s := range h.rooms[c] {
		if s != from && !(from != nil && from.fromAutomergeRepo() && s.fromAutomergeRepo()) {
			sinks = append(sinks, s)
		}
	}
	h.mu.Unlock()
	for _, s := range sinks {
		s.deliverPresence(m)
	}
}

// presenceKey is what a peer is present on: a record, or a collection
// (record "").
type presenceKey struct {
	c      Coll
	record string
}

// sessionPresence is a device session's side of presence: what it
// announced (to say goodbye for it when the session ends), its rate, and
// its queue of others' presence to send.
type sessionPresence struct {
	id      string // the session, for automerge-repo's duplicate check
	count   atomic.Uint64
	limiter *rate.Limiter
	now     func() time.Time

	mu    sync.Mutex
	keys  map[presenceKey]struct{}
	out   chan *presenceMsg
	start sync.Once
}

func newSessionPresence(now func() time.Time) *sessionPresence {
	b := make([]byte, 8)
	rand.Read(b)
	return &sessionPresence{
		id:      "ferry-" + hex.EncodeToString(b),
		limiter: rate.NewLimiter(presenceRate, presenceBurst),
		now:     now,
		keys:    map[presenceKey]struct{}{},
		out:     make(chan *presenceMsg, presenceQueue),
	}
}

// presence handles a device's presence message.
func (sess *session) presence(claims *Claims, m *transport.Presence) (transport.Body, error) {
	c, err := sess.coll(claims, m.Collection, false)
	if err != nil {
		return nil, err
	}
	sp := sess.pres
	if !sp.limiter.AllowN(sp.now(), 1) {
		return nil, &transport.Error{Code: transport.CodeRateLimited, RetryMS: 1000 / presenceRate,
			Message: fmt.Sprintf("presence: more than %d messages a second; send the latest state less often", presenceRate)}
	}
	if err := presenceDecMode.Wellformed(m.Data); err != nil {
		return nil, perr(transport.CodeBadFrame, "presence data is not well-formed CBOR: %v", err)
	}
	k := presenceKey{c, m.Record}
	sp.mu.Lock()
	if _, ok := sp.keys[k]; !ok && len(sp.keys) >= presenceRecords {
		sp.mu.Unlock()
		return nil, perr(transport.CodeTooLarge, "presence on more than %d records at once; say goodbye on some first", presenceRecords)
	}
	sp.keys[k] = struct{}{}
	sp.mu.Unlock()
	sess.s.pres.publish(c, &presenceMsg{
		p:       transport.Presence{Collection: c.Collection, Record: m.Record, Peer: sess.peer, Data: m.Data},
		session: sp.id, count: sp.count.Add(1),
	}, sess)
	return &transport.OK{}, nil
}

// presenceGone says goodbye for everything the session announced, once it
// has ended.
func (sess *session) presenceGone() {
	sp := sess.pres
	sp.mu.Lock()
	keys := sp.keys
	sp.keys = nil
	sp.mu.Unlock()
	for k := range keys {
		sess.s.pres.publish(k.c, &presenceMsg{
			p:       transport.Presence{Collection: k.c.Collection, Record: k.record, Peer: sess.peer, Data: goodbye},
			session: sp.id, count: sp.count.Add(1),
		}, sess)
	}
}

// joinPresence makes the session receive c's presence while it is
// subscribed to c (subscribing checked the token may read c).
func (sess *session) joinPresence(c Coll) (leave func()) {
	sp := sess.pres
	sp.start.Do(func() {
		sess.wg.Add(1)
		go func() {
			defer sess.wg.Done()
			sess.sendPresence()
		}()
	})
	return sess.s.pres.join(c, sess)
}

func (sess *session) fromAutomergeRepo() bool { return false }

func (sess *session) deliverPresence(m *presenceMsg) {
	select {
	case sess.pres.out <- m:
		sess.s.pres.sent.Inc()
	default:
		sess.s.pres.dropped.Inc()
	}
}

// sendPresence sends others' presence to the device until the session
// ends; a message for a token that expired meanwhile is dropped.
func (sess *session) sendPresence() {
	for {
		select {
		case <-sess.ctx.Done():
			return
		case m := <-sess.pres.out:
			if sess.s.expired(sess.currentClaims()) != nil {
				continue
			}
			if err := sess.conn.SendBody(sess.ctx, 0, &m.p); err != nil {
				return
			}
		}
	}
}
