package replica

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/transport"
)

// liveDevice opens a replica with a live two-way profile on collection c.
func (e *syncEnv) liveDevice(o *Options) *Replica {
	e.t.Helper()
	r := e.device(o)
	p := e.profile("live")
	p.Mode = policy.Live
	if err := r.AddProfile(p); err != nil {
		e.t.Fatal(err)
	}
	return r
}

// nextPresence returns the next event of w, failing the test if none
// comes within a minute.
func nextPresence(t *testing.T, w *PresenceWatch) PresenceEvent {
	t.Helper()
	select {
	case ev, ok := <-w.C:
		if !ok {
			t.Fatalf("presence watch closed: %v", w.Err())
		}
		return ev
	case <-time.After(time.Minute):
		t.Fatal("no presence event within a minute")
	}
	return PresenceEvent{}
}

// TestPresenceBetweenDevices: a device's state reaches another as joined,
// then updated; its goodbye and its disconnection reach it as left; and a
// device that connects later learns the states of those already there.
func TestPresenceBetweenDevices(t *testing.T) {
	e := newSyncEnv(t)
	a := e.liveDevice(nil)
	b := e.liveDevice(nil)
	wb := b.Collection("c").WatchPresence(64)
	defer wb.Close()

	// a sets its state; b, present too, sees a join.
	if err := b.Collection("c").SetPresence("doc1", map[string]any{"user": "bo"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Collection("c").SetPresence("doc1", map[string]any{"user": "ann", "cursor": 3}); err != nil {
		t.Fatal(err)
	}
	ev := nextPresence(t, wb)
	for ev.Peer.ID != a.ID() { // b's first events may be of its own connection's start
		ev = nextPresence(t, wb)
	}
	if ev.Kind != PeerJoined || ev.Record != "doc1" || ev.Peer.State["user"] != "ann" {
		t.Fatalf("b saw %+v, want ann joining doc1", ev)
	}
	if got := b.Collection("c").Peers("doc1"); len(got) != 1 || got[0].ID != a.ID() {
		t.Fatalf("b's peers on doc1: %+v", got)
	}
	// a learns b's state too: b answers a newcomer with its own.
	waitPeers(t, a, "doc1", 1)

	if err := a.Collection("c").SetPresence("doc1", map[string]any{"user": "ann", "cursor": 9}); err != nil {
		t.Fatal(err)
	}
	ev = nextPresence(t, wb)
	if ev.Kind != PeerUpdated || ev.Peer.State["cursor"] != uint64(9) {
		t.Fatalf("b saw %+v, want ann's cursor at 9", ev)
	}

	a.Collection("c").ClearPresence("doc1")
	if ev = nextPresence(t, wb); ev.Kind != PeerLeft || ev.Peer.ID != a.ID() {
		t.Fatalf("b saw %+v, want ann leaving", ev)
	}

	// A device that disconnects leaves: the relay says goodbye for it.
	a.Collection("c").SetPresence("", map[string]any{"user": "ann"}) // on the whole collection
	if ev = nextPresence(t, wb); ev.Kind != PeerJoined || ev.Record != "" {
		t.Fatalf("b saw %+v, want ann joining the collection", ev)
	}
	a.Close()
	if ev = nextPresence(t, wb); ev.Kind != PeerLeft || ev.Peer.ID != a.ID() || ev.Record != "" {
		t.Fatalf("b saw %+v, want ann leaving when her device closed", ev)
	}
}

func waitPeers(t *testing.T, r *Replica, id string, n int) []Peer {
	t.Helper()
	c := r.Collection("c")
	// Watch first, then look: any change after the look is an event.
	w := c.WatchPresence(64)
	defer func() { w.Close() }()
	timeout := time.After(time.Minute) // only turns a hang into a failure
	for {
		if got := c.Peers(id); len(got) == n {
			return got
		}
		select {
		case _, ok := <-w.C:
			if !ok { // overflowed: watch again, and look again
				if err := w.Err(); !errors.Is(err, ErrFeedOverflow) {
					t.Fatalf("presence watch ended: %v", err)
				}
				w = c.WatchPresence(64)
			}
		case <-timeout:
			t.Fatalf("%s never saw %d peers on %q: %+v", r.ID()[:6], n, id, c.Peers(id))
		}
	}
}

// A reconnecting device sends its state again: presence survives neither
// a relay restart nor a reconnect on the relay's side, so the device
// republishes.
func TestPresenceRepublishedAfterRelayRestart(t *testing.T) {
	e := newSyncEnv(t)
	o := &Options{BackoffMin: time.Millisecond, BackoffMax: 10 * time.Millisecond, PresenceHeartbeat: 20 * time.Millisecond}
	a := e.liveDevice(o)
	b := e.liveDevice(o)
	a.Collection("c").SetPresence("doc1", map[string]any{"user": "ann"})
	waitPeers(t, b, "doc1", 1)
	e.swap(memstore.New()) // a new relay process: it knows no presence
	// b forgot a when its connection ended, and learns her again once
	// both reconnect: from a's first message if b was subscribed by
	// then, or else from her next heartbeat.
	got := waitPeers(t, b, "doc1", 1)
	if got[0].ID != a.ID() || got[0].State["user"] != "ann" {
		t.Fatalf("after the restart b sees %+v", got)
	}
}

func TestPresenceStateTooLarge(t *testing.T) {
	e := newSyncEnv(t)
	a := e.device(nil)
	err := a.Collection("c").SetPresence("doc1", map[string]any{"blob": strings.Repeat("x", transport.MaxPresenceData)})
	if !errors.Is(err, ErrPresenceTooLarge) {
		t.Fatalf("SetPresence with 4 KiB: %v, want ErrPresenceTooLarge", err)
	}
}

// A peer not heard from for three heartbeats has left.
func TestPresencePeerTimesOut(t *testing.T) {
	clock := &testClock{t: time.Unix(1e9, 0)}
	p := newPresence(clock.Now, DefaultPresenceHeartbeat)
	ttl := 3 * DefaultPresenceHeartbeat
	pc := p.attach([]string{"c"})
	w := &PresenceWatch{c: make(chan PresenceEvent, 8), coll: "c", p: p}
	w.C = w.c
	p.watches[w] = struct{}{}
	hb := &transport.Presence{Collection: "c", Record: "r", Peer: "js-peer", Data: mustPresence(map[string]any{"type": "heartbeat"})}
	p.receive(pc, hb)
	if ev := <-w.C; ev.Kind != PeerJoined {
		t.Fatalf("first heartbeat: %+v", ev)
	}
	clock.Advance(ttl - time.Second)
	p.receive(pc, hb) // heard from again: not pruned below
	clock.Advance(ttl - time.Second)
	p.prune()
	if len(p.peersOf(presenceKey{"c", "r"})) != 1 {
		t.Fatal("a peer heard from within the TTL was pruned")
	}
	clock.Advance(2 * time.Second)
	p.prune()
	if ev := <-w.C; ev.Kind != PeerLeft || ev.Peer.ID != "js-peer" {
		t.Fatalf("after the TTL: %+v, want the peer gone", ev)
	}
}
