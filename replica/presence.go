package replica

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/ferrysync/ferry/transport"
)

// Presence is who else is looking at a record, or at a collection, and
// where: a user's name and colour, a cursor, a selection, "typing". Each
// device sets its own state (SetPresence) and sees the others' (Peers,
// WatchPresence). Presence travels on a live profile's connection and is
// never stored, by the device or the relay: it needs a live profile that
// syncs the collection, it is sent again whenever that connection comes
// back, and peers learnt through a connection are forgotten when it ends.
//
// The encoding is automerge-repo's (its Presence class), so Go devices and
// automerge-repo clients syncing the same record see each other: a
// browser's `new Presence({handle}).start({initialState})` appears here as
// a peer named by its peer ID, and a Go device appears there as a peer
// named by its replica ID. Presence on a whole collection (record "")
// reaches Go devices only.
//
// Timing follows automerge-repo's defaults: a device says its whole state
// again every Options.PresenceHeartbeat (default
// DefaultPresenceHeartbeat) while it has one, so a device that connects
// later learns it within that time even if it missed the first; a peer
// not heard from for three heartbeats is taken to have left.
const DefaultPresenceHeartbeat = 15 * time.Second

// presenceGap is the least time between two rounds of presence sent on a
// connection: states set faster are coalesced (the latest wins), which
// keeps a device within the relay's rate (20 messages a second).
const presenceGap = 50 * time.Millisecond

// Peer is another device's or client's presence.
type Peer struct {
	ID       string         // a Go device's replica ID, or an automerge-repo peer ID
	State    map[string]any // its latest state, as CBOR decodes it (strings, int64 or uint64, float64, bool, []any, map[string]any)
	LastSeen time.Time      // by the replica's clock
}

// PresenceKind says what a PresenceEvent reports.
type PresenceKind int

const (
	// PeerJoined: a peer was seen for the first time (or again, after it
	// left).
	PeerJoined PresenceKind = iota + 1
	// PeerUpdated: a peer's state changed.
	PeerUpdated
	// PeerLeft: a peer said goodbye, its connection or this device's
	// ended, or it was not heard from for three heartbeats.
	PeerLeft
)

func (k PresenceKind) String() string {
	switch k {
	case PeerJoined:
		return "joined"
	case PeerUpdated:
		return "updated"
	case PeerLeft:
		return "left"
	}
	return fmt.Sprintf("PresenceKind(%d)", int(k))
}

// PresenceEvent is a change of a peer's presence on a record (Record "":
// on the collection).
type PresenceEvent struct {
	Kind       PresenceKind
	Collection string
	Record     string
	Peer       Peer
}

// ErrPresenceTooLarge is returned by SetPresence for a state whose
// encoding exceeds transport.MaxPresenceData.
var ErrPresenceTooLarge = errors.New("ferry: presence state too large")

// SetPresence sets this device's presence on record id (or, with id "",
// on the whole collection) to state, and sends it to the peers through
// every live profile that syncs the collection, now or when one connects.
// state must encode as CBOR (maps with string keys, strings, numbers,
// booleans, slices) within transport.MaxPresenceData bytes. Setting
// states faster than 20 a second only sends the latest.
//
// Concurrency: safe from any goroutine; it never blocks on the network.
func (c *Collection) SetPresence(id string, state map[string]any) error {
	if err := ValidateCollection(c.name); err != nil {
		return err
	}
	if id != "" {
		if err := ValidateID(id); err != nil {
			return err
		}
	}
	data, err := presenceEncode(map[string]any{"type": "snapshot", "state": state})
	if err != nil {
		return err
	}
	c.r.pres.set(presenceKey{c.name, id}, data, false)
	return nil
}

// ClearPresence removes this device's presence on record id (or the
// collection): the peers are told it left.
func (c *Collection) ClearPresence(id string) {
	c.r.pres.set(presenceKey{c.name, id}, nil, true)
}

// Peers returns the presence of the other peers on record id (or the
// collection), ordered by ID.
func (c *Collection) Peers(id string) []Peer {
	return c.r.pres.peersOf(presenceKey{c.name, id})
}

// PresenceWatch delivers the presence events of a collection. C is closed
// by Close, when the replica closes, or when the reader falls behind its
// buffer (Err is then ErrFeedOverflow: read Peers again and watch anew).
type PresenceWatch struct {
	C <-chan PresenceEvent

	c    chan PresenceEvent
	coll string
	p    *presence
	err  error // set before c is closed; guarded by p.mu
}

// WatchPresence returns the presence events of the collection's records
// and of the collection itself, from now on, buffering buf of them.
//
// Concurrency: events are sent from the goroutine of the connection they
// came through, never under a lock the reader could need; Close may be
// called from any goroutine, more than once.
func (c *Collection) WatchPresence(buf int) *PresenceWatch {
	ch := make(chan PresenceEvent, max(buf, 1))
	w := &PresenceWatch{C: ch, c: ch, coll: c.name, p: c.r.pres}
	c.r.pres.mu.Lock()
	defer c.r.pres.mu.Unlock()
	if c.r.pres.closed {
		w.err = ErrClosed
		close(ch)
		return w
	}
	c.r.pres.watches[w] = struct{}{}
	return w
}

// Close stops the watch and closes C.
func (w *PresenceWatch) Close() { w.p.unwatch(w, nil) }

// Err returns why C was closed: nil after Close, ErrFeedOverflow, or
// ErrClosed.
func (w *PresenceWatch) Err() error {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.err
}

// presenceKey is what presence is on: a record of a collection, or the
// collection (record "").
type presenceKey struct {
	coll, record string
}

// peerKey names a peer on a key as learnt through one connection.
type peerState struct {
	peer  Peer
	via   *presenceConn
	known bool // its state was seen (not only a heartbeat)
}

// presence holds this device's states and the peers', in memory only.
type presence struct {
	now       func() time.Time
	heartbeat time.Duration
	ttl       time.Duration // a peer not heard from for this long has left

	mu      sync.Mutex
	own     map[presenceKey][]byte // encoded snapshot of each state set
	peers   map[presenceKey]map[string]*peerState
	conns   map[*presenceConn]struct{}
	watches map[*PresenceWatch]struct{}
	closed  bool
}

func newPresence(now func() time.Time, heartbeat time.Duration) *presence {
	return &presence{now: now, ttl: 3 * heartbeat, heartbeat: heartbeat, own: map[presenceKey][]byte{}, peers: map[presenceKey]map[string]*peerState{},
		conns: map[*presenceConn]struct{}{}, watches: map[*PresenceWatch]struct{}{}}
}

// presenceConn is a live connection's side of presence: what it still has
// to send, and a kick for its goroutine.
type presenceConn struct {
	colls map[string]bool
	dirty map[presenceKey][]byte // to send: a snapshot, or goodbye
	kick  chan struct{}
}

// set records this device's state on k (nil and clear: none) and has
// every connection syncing k's collection send it.
func (p *presence) set(k presenceKey, data []byte, clear bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if clear {
		if _, ok := p.own[k]; !ok {
			return
		}
		delete(p.own, k)
		data = presenceGoodbye
	} else {
		p.own[k] = data
	}
	for pc := range p.conns {
		if pc.colls[k.coll] {
			pc.dirty[k] = data
			pc.wake()
		}
	}
}

func (pc *presenceConn) wake() {
	select {
	case pc.kick <- struct{}{}:
	default:
	}
}

func (p *presence) peersOf(k presenceKey) []Peer {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Peer
	for _, ps := range p.peers[k] {
		out = append(out, clonePeer(ps.peer))
	}
	slices.SortFunc(out, func(a, b Peer) int {
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	return out
}

func clonePeer(p Peer) Peer {
	p.State = maps.Clone(p.State)
	return p
}

// emitLocked sends ev to the collection's watches; a full one is ended
// with ErrFeedOverflow. Sends never block, so this may run under p.mu.
func (p *presence) emitLocked(ev PresenceEvent) {
	for w := range p.watches {
		if w.coll != ev.Collection {
			continue
		}
		select {
		case w.c <- PresenceEvent{Kind: ev.Kind, Collection: ev.Collection, Record: ev.Record, Peer: clonePeer(ev.Peer)}:
		default:
			w.err = ErrFeedOverflow
			delete(p.watches, w)
			close(w.c)
		}
	}
}

func (p *presence) unwatch(w *PresenceWatch, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.watches[w]; ok {
		delete(p.watches, w)
		w.err = err
		close(w.c)
	}
}

// close ends every watch with ErrClosed.
func (p *presence) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for w := range p.watches {
		w.err = ErrClosed
		close(w.c)
	}
	clear(p.watches)
}

// attach starts a connection's presence for colls: everything this device
// has set on them is sent.
func (p *presence) attach(colls []string) *presenceConn {
	pc := &presenceConn{colls: map[string]bool{}, dirty: map[presenceKey][]byte{}, kick: make(chan struct{}, 1)}
	for _, c := range colls {
		pc.colls[c] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns[pc] = struct{}{}
	for k, data := range p.own {
		if pc.colls[k.coll] {
			pc.dirty[k] = data
		}
	}
	pc.wake()
	return pc
}

// detach ends a connection's presence: the peers learnt through it left.
func (p *presence) detach(pc *presenceConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, pc)
	for k, peers := range p.peers {
		for id, ps := range peers {
			if ps.via == pc {
				delete(peers, id)
				p.emitLocked(PresenceEvent{Kind: PeerLeft, Collection: k.coll, Record: k.record, Peer: ps.peer})
			}
		}
		if len(peers) == 0 {
			delete(p.peers, k)
		}
	}
}

// take returns what the connection has to send, and clears it.
func (p *presence) take(pc *presenceConn) map[presenceKey][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := pc.dirty
	pc.dirty = map[presenceKey][]byte{}
	return out
}

// heartbeats returns each state this device has set on the connection's
// collections: a heartbeat that also tells peers who missed it.
func (p *presence) heartbeats(pc *presenceConn) map[presenceKey][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[presenceKey][]byte{}
	for k, data := range p.own {
		if pc.colls[k.coll] {
			out[k] = data
		}
	}
	return out
}

// prune forgets the peers not heard from for the TTL.
func (p *presence) prune() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for k, peers := range p.peers {
		for id, ps := range peers {
			if now.Sub(ps.peer.LastSeen) >= p.ttl {
				delete(peers, id)
				p.emitLocked(PresenceEvent{Kind: PeerLeft, Collection: k.coll, Record: k.record, Peer: ps.peer})
			}
		}
		if len(peers) == 0 {
			delete(p.peers, k)
		}
	}
}

// receive applies a peer's presence message that came through pc.
// Messages that are not automerge-repo presence are ignored.
func (p *presence) receive(pc *presenceConn, m *transport.Presence) {
	var env struct {
		P *struct {
			Type    string         `cbor:"type"`
			State   map[string]any `cbor:"state"`
			Channel string         `cbor:"channel"`
			Value   any            `cbor:"value"`
		} `cbor:"__presence"`
	}
	if presenceDecMode.Unmarshal(m.Data, &env) != nil || env.P == nil || m.Peer == "" {
		return
	}
	k := presenceKey{m.Collection, m.Record}
	p.mu.Lock()
	defer p.mu.Unlock()
	peers := p.peers[k]
	ps := peers[m.Peer]
	if env.P.Type == "goodbye" {
		if ps != nil {
			delete(peers, m.Peer)
			p.emitLocked(PresenceEvent{Kind: PeerLeft, Collection: k.coll, Record: k.record, Peer: ps.peer})
		}
		return
	}
	isNew := ps == nil
	if isNew {
		if peers == nil {
			peers = map[string]*peerState{}
			p.peers[k] = peers
		}
		ps = &peerState{peer: Peer{ID: m.Peer, State: map[string]any{}}}
		peers[m.Peer] = ps
		// A peer seen for the first time learns this device's state
		// (automerge-repo's Presence does the same).
		if own, ok := p.own[k]; ok {
			pc.dirty[k] = own
			pc.wake()
		}
	}
	ps.via, ps.peer.LastSeen = pc, p.now()
	before := ps.peer.State
	switch env.P.Type {
	case "snapshot":
		ps.peer.State = env.P.State
		if ps.peer.State == nil {
			ps.peer.State = map[string]any{}
		}
		ps.known = true
	case "update":
		ps.peer.State = maps.Clone(ps.peer.State)
		ps.peer.State[env.P.Channel] = env.P.Value
		ps.known = true
	case "heartbeat":
	default:
		return
	}
	switch {
	case isNew:
		p.emitLocked(PresenceEvent{Kind: PeerJoined, Collection: k.coll, Record: k.record, Peer: ps.peer})
	case !reflect.DeepEqual(before, ps.peer.State):
		p.emitLocked(PresenceEvent{Kind: PeerUpdated, Collection: k.coll, Record: k.record, Peer: ps.peer})
	}
}

// runPresence is a live connection's presence: it sends what this device
// sets (coalesced, presenceGap apart), heartbeats, and receives the
// peers', until ctx ends.
func (r *Replica) runPresence(ctx context.Context, conn *relayConn, p *Profile) {
	pc := r.pres.attach(p.Collections)
	defer r.pres.detach(pc)
	beat := time.NewTicker(r.pres.heartbeat)
	defer beat.Stop()
	var next time.Time // no round before this
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-conn.client.Presence():
			if !ok {
				return
			}
			r.pres.receive(pc, m)
		case <-beat.C:
			r.pres.prune()
			r.sendPresence(ctx, conn, r.pres.heartbeats(pc))
		case <-pc.kick:
			if wait := next.Sub(time.Now()); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
			r.sendPresence(ctx, conn, r.pres.take(pc))
			next = time.Now().Add(presenceGap)
		}
	}
}

// sendPresence sends each message; a refusal is logged, not retried: the
// next state or heartbeat says it again.
func (r *Replica) sendPresence(ctx context.Context, conn *relayConn, msgs map[presenceKey][]byte) {
	for k, data := range msgs {
		err := conn.call(ctx, &transport.Presence{Collection: k.coll, Record: k.record, Data: data}, &transport.OK{})
		if err != nil && ctx.Err() == nil {
			r.log.Warn("presence not sent", "collection", k.coll, "record", k.record, "err", err)
		}
	}
}

var presenceDecMode = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		MaxNestedLevels:  16,
		MaxArrayElements: 1024,
		MaxMapPairs:      256,
		DefaultMapType:   reflect.TypeOf(map[string]any(nil)),
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

// presenceEncode encodes one of automerge-repo's presence messages.
func presenceEncode(msg map[string]any) ([]byte, error) {
	b, err := cbor.Marshal(map[string]any{"__presence": msg})
	if err != nil {
		return nil, fmt.Errorf("ferry: presence state: %w", err)
	}
	if len(b) > transport.MaxPresenceData {
		return nil, fmt.Errorf("%w: %d bytes encoded, at most %d", ErrPresenceTooLarge, len(b), transport.MaxPresenceData)
	}
	return b, nil
}

var presenceGoodbye = mustPresence(map[string]any{"type": "goodbye"})

func mustPresence(msg map[string]any) []byte {
	b, err := presenceEncode(msg)
	if err != nil {
		panic(err)
	}
	return b
}
