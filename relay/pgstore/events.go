package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/ferrysync/ferry/internal/lru"
	"github.com/ferrysync/ferry/relay"
)

// Relays tell each other of appends and lease releases with NOTIFY on the
// schema's channel, after the commit: a NOTIFY inside the append's
// transaction would take PostgreSQL's notification lock until the commit
// is flushed, serializing every append of the database. A notification is
// a hint; one that is lost (the relay died between its commit and its
// NOTIFY) costs the other relays' subscribers the relay's sweep interval.
//
// A payload is this Store's tag, then tokens: "a" or "l" (append, release)
// and a collection's id, such as "3fa9c2d1 a12 a15 l12".

const (
	kindAppend  = 1
	kindRelease = 2
	// maxPayload keeps a payload under PostgreSQL's limit of 8000 bytes.
	maxPayload = 7000
)

func randomTag() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// collCache maps collection ids to collections, for the notifications,
// which name collections by id.
type collCache struct{ c *lru.Cache[int64, relay.Coll] }

func newCollCache() *collCache { return &collCache{c: lru.New[int64, relay.Coll](1 << 16)} }

func (cc *collCache) put(id int64, c relay.Coll)      { cc.c.Put(id, c) }
func (cc *collCache) get(id int64) (relay.Coll, bool) { return cc.c.Get(id) }

// notifier sends this Store's appends and releases to the other relays,
// coalescing what accumulates while a NOTIFY is under way, so that the
// pushes themselves never wait for one.
type notifier struct {
	s       *Store
	mu      sync.Mutex
	pending map[int64]byte // collection id -> kinds
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

func (s *Store) startNotifier() *notifier {
	n := &notifier{s: s, pending: map[int64]byte{}, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go n.run()
	return n
}

func (n *notifier) appended(id int64) { n.add(id, kindAppend) }
func (n *notifier) released(id int64) { n.add(id, kindRelease) }

func (n *notifier) add(id int64, kind byte) {
	n.mu.Lock()
	n.pending[id] |= kind
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// close sends what is pending and stops.
func (n *notifier) close() {
	close(n.stop)
	<-n.done
}

func (n *notifier) run() {
	defer close(n.done)
	for {
		select {
		case <-n.wake:
			n.flush()
		case <-n.stop:
			n.flush()
			return
		}
	}
}

func (n *notifier) flush() {
	n.mu.Lock()
	pending := n.pending
	if len(pending) == 0 {
		n.mu.Unlock()
		return
	}
	n.pending = map[int64]byte{}
	n.mu.Unlock()
	var payloads []string
	var b strings.Builder
	b.WriteString(n.s.tag)
	for id, kinds := range pending {
		for _, k := range []struct {
			bit byte
			tok string
		}{{kindAppend, " a"}, {kindRelease, " l"}} {
			if kinds&k.bit == 0 {
				continue
			}
			if b.Len() > maxPayload {
				payloads = append(payloads, b.String())
				b.Reset()
				b.WriteString(n.s.tag)
			}
			b.WriteString(k.tok)
			b.WriteString(strconv.FormatInt(id, 10))
		}
	}
	payloads = append(payloads, b.String())
	for _, p := range payloads {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := n.s.pool.Exec(ctx, "SELECT pg_notify($1, $2)", n.s.channel, p)
		cancel()
		if err != nil {
			n.s.metrics.notifyFailed.Inc()
			n.s.opts.Logger.Debug("notifying other relays failed; they will find the change at their next sweep", "err", err)
			continue
		}
		n.s.metrics.notifySent.Inc()
	}
}

// events listens for the other relays' notifications on a connection of
// its own, and hands them to the watchers.
type events struct {
	s      *Store
	cfg    *pgx.ConnConfig
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	watchers map[*watcher]struct{}
}

type watcher struct {
	fn    func(relay.StoreEvent)
	calls sync.WaitGroup
}

// startEvents connects the listening connection, so that notifications
// sent once Open has returned are not missed, and starts listening.
func (s *Store) startEvents(ctx context.Context, cfg *pgx.ConnConfig) (*events, error) {
	lctx, cancel := context.WithCancel(s.base)
	e := &events{s: s, cfg: cfg, cancel: cancel, done: make(chan struct{}), watchers: map[*watcher]struct{}{}}
	conn, err := e.connect(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	go e.run(lctx, conn)
	return e, nil
}

func (e *events) close() {
	e.cancel()
	<-e.done
}

func (e *events) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, e.cfg.Copy())
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{e.s.channel}.Sanitize()); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	return conn, nil
}

func (e *events) run(ctx context.Context, conn *pgx.Conn) {
	defer close(e.done)
	for {
		for {
			n, err := conn.WaitForNotification(ctx)
			if err != nil {
				break
			}
			e.s.metrics.notifyReceived.Inc()
			e.handle(ctx, n.Payload)
		}
		conn.Close(context.Background())
		if ctx.Err() != nil {
			return
		}
		e.s.metrics.listenLost.Inc()
		e.s.opts.Logger.Warn("lost the connection that listens for other relays' changes; reconnecting")
		lost, attempts := time.Now(), 0
		for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			var err error
			attempts++
			if conn, err = e.connect(ctx); err == nil {
				break
			}
		}
		// Said as loudly as the loss is not: an operator who saw the
		// warning needs to know it is over.
		e.s.opts.Logger.Info("listening for other relays' changes again",
			"down", time.Since(lost).Round(time.Millisecond), "attempts", attempts)
		// Whatever was sent while the connection was down is lost.
		e.emit(relay.StoreEvent{Kind: relay.EventsMissed})
	}
}

// handle turns a payload into events, looking up the collections this
// Store has not seen yet.
func (e *events) handle(ctx context.Context, payload string) {
	toks := strings.Fields(payload)
	if len(toks) == 0 || toks[0] == e.s.tag {
		return // this Store's own: its relay knows already
	}
	if len(toks) == 3 && toks[1] == "P" {
		if c, msg, ok := decodePresence(toks[2]); ok {
			e.emit(relay.StoreEvent{Kind: relay.EventPresence, Coll: c, Presence: string(msg)})
		}
		return
	}
	type ev struct {
		id   int64
		kind relay.StoreEventKind
	}
	var evs []ev
	var unknown []int64
	for _, t := range toks[1:] {
		if len(t) < 2 {
			continue
		}
		id, err := strconv.ParseInt(t[1:], 10, 64)
		if err != nil {
			continue
		}
		switch t[0] {
		case 'a':
			evs = append(evs, ev{id, relay.EventAppended})
		case 'l':
			evs = append(evs, ev{id, relay.EventLeaseReleased})
		default:
			continue
		}
		if _, ok := e.s.colls.get(id); !ok {
			unknown = append(unknown, id)
		}
	}
	if len(unknown) > 0 {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := e.s.lookupColls(qctx, unknown)
		cancel()
		if err != nil {
			// Better a wake-up for everyone than none for the right ones.
			e.emit(relay.StoreEvent{Kind: relay.EventsMissed})
			return
		}
	}
	for _, x := range evs {
		if c, ok := e.s.colls.get(x.id); ok {
			e.emit(relay.StoreEvent{Kind: x.kind, Coll: c})
		}
	}
}

func (s *Store) lookupColls(ctx context.Context, ids []int64) error {
	rows, err := s.pool.Query(ctx, "SELECT id, tenant, coll FROM ferry_colls WHERE id = ANY($1)", ids)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var c relay.Coll
		if err := rows.Scan(&id, &c.Tenant, &c.Collection); err != nil {
			return err
		}
		s.colls.put(id, c)
	}
	return rows.Err()
}

// Watch implements relay.StoreEvents: fn is called with the appends and
// lease releases other Stores on this schema (other relay processes) make,
// and with relay.EventsMissed after the listening connection was lost and
// made again. Calls come from one goroutine, in order; fn must not block,
// nor call stop. stop returns once no call of fn is in progress.
func (s *Store) Watch(fn func(relay.StoreEvent)) (stop func()) {
	e := s.events
	w := &watcher{fn: fn}
	e.mu.Lock()
	e.watchers[w] = struct{}{}
	e.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			e.mu.Lock()
			delete(e.watchers, w)
			e.mu.Unlock()
			w.calls.Wait()
		})
	}
}

func (e *events) emit(ev relay.StoreEvent) {
	e.mu.Lock()
	ws := make([]*watcher, 0, len(e.watchers))
	for w := range e.watchers {
		w.calls.Add(1)
		ws = append(ws, w)
	}
	e.mu.Unlock()
	for _, w := range ws {
		w.fn(ev)
		w.calls.Done()
	}
}

// PublishPresence implements relay.StorePresence: a NOTIFY on the schema's
// channel, "tag P base64", which the other Stores on the schema emit as
// relay.EventPresence. Nothing is written; a relay that is not listening
// at that moment never sees it, as presence wants.
func (s *Store) PublishPresence(ctx context.Context, c relay.Coll, msg []byte) error {
	if len(msg) > relay.MaxStorePresence {
		return fmt.Errorf("pgstore: presence of %d bytes exceeds %d", len(msg), relay.MaxStorePresence)
	}
	b, err := msgpack.Marshal([]any{c.Tenant, c.Collection, msg})
	if err != nil {
		return err
	}
	payload := s.tag + " P " + base64.StdEncoding.EncodeToString(b)
	if len(payload) >= 8000 {
		return fmt.Errorf("pgstore: presence payload of %d bytes exceeds PostgreSQL's 8000", len(payload))
	}
	_, err = s.pool.Exec(ctx, "SELECT pg_notify($1, $2)", s.channel, payload)
	return err
}

func decodePresence(tok string) (relay.Coll, []byte, bool) {
	b, err := base64.StdEncoding.DecodeString(tok)
	if err != nil || len(b) > 2*relay.MaxStorePresence {
		return relay.Coll{}, nil, false
	}
	var v struct {
		_msgpack struct{} `msgpack:",as_array"`
		Tenant   string
		Coll     string
		Msg      []byte
	}
	if msgpack.Unmarshal(b, &v) != nil || v.Tenant == "" || v.Coll == "" {
		return relay.Coll{}, nil, false
	}
	return relay.Coll{Tenant: v.Tenant, Collection: v.Coll}, v.Msg, true
}

var _ relay.StorePresence = (*Store)(nil)
