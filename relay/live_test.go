package relay_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// A subscriber that never reads is cut off once a live message has waited
// SlowWriteTimeout, counted as a slow consumer, and its session ends; the
// relay does not wait for keepalive (off here) to notice.
func TestSubscriberThatNeverReadsIsCutOff(t *testing.T) {
	tr := newTestRelayOn(t, memstore.New(), func(o *relay.Options) { o.SlowWriteTimeout = 100 * time.Millisecond }, smallSendBuffers)
	ended := make(chan struct{}, 4)
	*tr.srv.HookSessionEnded() = func() { ended <- struct{}{} }
	w := tr.client("shop")
	raw := tr.rawSubscriber("c")

	// 256 KiB of live changes: far more than the two sockets buffer.
	for i := range 8 {
		data := make([]byte, 32<<10)
		rand.Read(data)
		ed := storetest.NewEditor(t, fmt.Sprintf("%04x", 0xa00+i))
		mustCall[transport.Ack](t, w, pushOf("c", 0, rec(fmt.Sprint("r", i), ed.Edit(map[string]any{"blob": data}))))
	}
	select {
	case <-ended:
	case <-time.After(20 * time.Second): // only turns a hang into a failure
		t.Fatal("subscriber that never reads was not cut off")
	}
	if got := tr.metric("ferry_relay_slow_consumers_total"); got != "ferry_relay_slow_consumers_total 1" {
		t.Errorf("metric: %q, want 1", got)
	}
	// What reached the device before the cut is readable; then the
	// connection is over.
	for {
		_, err := raw.Recv(context.Background())
		if err != nil {
			if !errors.Is(err, transport.ErrClosed) {
				t.Fatalf("subscriber's Recv = %v, want ErrClosed", err)
			}
			break
		}
	}
	// The other session is unaffected.
	mustCall[transport.Changes](t, w, &transport.Pull{Collection: "c", Cursor: 1})
	select {
	case <-ended:
		t.Fatal("a second session ended")
	default:
	}
}

// expiryTimers replaces the relay's token-expiry timers with ones the test
// fires by hand, after moving the fake clock.
type expiryTimers chan expiryTimer

type expiryTimer struct {
	d    time.Duration
	fire chan time.Time
}

func installExpiryTimers(tr *testRelay) expiryTimers {
	ts := make(expiryTimers, 64)
	*tr.srv.HookNewTimer() = func(d time.Duration) (<-chan time.Time, func() bool) {
		et := expiryTimer{d: d, fire: make(chan time.Time, 1)}
		ts <- et
		return et.fire, func() bool { return true }
	}
	return ts
}

// next returns the timer the subscription set next, and checks its delay.
func (ts expiryTimers) next(t *testing.T, want time.Duration) expiryTimer {
	t.Helper()
	select {
	case et := <-ts:
		if et.d != want {
			t.Fatalf("subscription set a timer of %v, want %v", et.d, want)
		}
		return et
	case <-time.After(10 * time.Second):
		t.Fatal("subscription set no timer for its token's expiry")
	}
	return expiryTimer{}
}

// expectEnd waits for c's connection to end with the relay's error code.
func expectEnd(t *testing.T, c *transport.Client, want error) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("connection still open, want it closed with %v", want)
	}
	if err := c.Err(); !errors.Is(err, want) || transport.CloseStatus(err) != transport.ClosePolicy {
		t.Fatalf("connection ended with %v (close %d), want %v and close %d", err, transport.CloseStatus(err), want, transport.ClosePolicy)
	}
}

// An idle subscription wakes when its token expires and ends the session
// with token_expired: it does not stay open on an expired token waiting
// for a change to refuse.
func TestSubscriptionEndsAtTokenExpiry(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	timers := installExpiryTimers(tr)
	tok := tr.token("shop", relay.TokenRequest{Subject: "viewer", TTL: 10 * time.Minute, Read: []string{"c"}})
	sub, _, err := tr.dial(tr.apps["shop"].APIKey, tok, "r1")
	if err != nil {
		t.Fatal(err)
	}
	mustCall[transport.OK](t, sub, &transport.Subscribe{Collection: "c"})
	et := timers.next(t, 10*time.Minute)
	tr.clock.Advance(10 * time.Minute)
	et.fire <- tr.clock.Now()
	expectEnd(t, sub, transport.ErrTokenExpired)
}

// Changes pushed after the token expired are not delivered, even if the
// expiry timer has not fired yet.
func TestSubscriptionDeliversNothingAfterExpiry(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	timers := installExpiryTimers(tr)
	tok := tr.token("shop", relay.TokenRequest{Subject: "viewer", TTL: 10 * time.Minute, Read: []string{"c"}})
	sub, _, err := tr.dial(tr.apps["shop"].APIKey, tok, "r1")
	if err != nil {
		t.Fatal(err)
	}
	w := tr.client("shop") // its token lasts an hour
	ed := storetest.NewEditor(t, "fa01")
	mustCall[transport.OK](t, sub, &transport.Subscribe{Collection: "c"})
	timers.next(t, 10*time.Minute) // never fired
	mustCall[transport.Ack](t, w, pushOf("c", 0, rec("r", ed.Edit(map[string]any{"v": 1}))))
	if lv := nextLive(t, sub); lv.Next != 1 {
		t.Fatalf("live before expiry = %+v", lv)
	}
	timers.next(t, 10*time.Minute)

	tr.clock.Advance(10*time.Minute + time.Second)
	mustCall[transport.Ack](t, w, pushOf("c", 0, rec("r", ed.Edit(map[string]any{"v": 2}))))
	expectEnd(t, sub, transport.ErrTokenExpired)
	if lv, ok := <-sub.Live(); ok {
		t.Fatalf("delivered after the token expired: %+v", lv)
	}
}

// A session that sends auth before its token expires keeps its
// subscription: at the old expiry the subscription finds the new token and
// waits for that one's expiry instead.
func TestSubscriptionSurvivesTokenRefresh(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	timers := installExpiryTimers(tr)
	short := tr.token("shop", relay.TokenRequest{Subject: "viewer", TTL: 10 * time.Minute, Read: []string{"c"}})
	sub, _, err := tr.dial(tr.apps["shop"].APIKey, short, "r1")
	if err != nil {
		t.Fatal(err)
	}
	mustCall[transport.OK](t, sub, &transport.Subscribe{Collection: "c"})
	et := timers.next(t, 10*time.Minute)

	tr.clock.Advance(9 * time.Minute)
	fresh := tr.token("shop", relay.TokenRequest{Subject: "viewer", TTL: time.Hour, Read: []string{"c"}})
	mustCall[transport.OK](t, sub, &transport.Auth{Token: fresh})
	tr.clock.Advance(time.Minute)
	et.fire <- tr.clock.Now()
	timers.next(t, 59*time.Minute) // the fresh token's expiry

	w := tr.client("shop")
	mustCall[transport.Ack](t, w, pushOf("c", 0, rec("r", storetest.NewEditor(t, "fa02").Edit(map[string]any{"v": 1}))))
	if lv := nextLive(t, sub); lv.Next != 1 || len(lv.Records) != 1 {
		t.Fatalf("live after refresh = %+v", lv)
	}
}

// A refreshed token that no longer grants the collection stops its
// subscription (forbidden), and a token that never granted it cannot
// subscribe at all.
func TestSubscriptionNeedsReadRight(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	key := tr.apps["shop"].APIKey
	ro := tr.token("shop", relay.TokenRequest{Subject: "viewer", TTL: time.Hour, Read: []string{"catalog"}})
	sub, _, err := tr.dial(key, ro, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := call[transport.OK](t, sub, &transport.Subscribe{Collection: "orders"}); !errors.Is(err, transport.ErrForbidden) {
		t.Fatalf("subscribe to an ungranted collection = %v, want forbidden", err)
	}
	mustCall[transport.OK](t, sub, &transport.Subscribe{Collection: "catalog"})

	narrower := tr.token("shop", relay.TokenRequest{Subject: "viewer", TTL: time.Hour, Read: []string{"prices"}})
	mustCall[transport.OK](t, sub, &transport.Auth{Token: narrower})
	w := tr.client("shop")
	mustCall[transport.Ack](t, w, pushOf("catalog", 0, rec("r", storetest.NewEditor(t, "fa03").Edit(map[string]any{"v": 1}))))
	expectEnd(t, sub, transport.ErrForbidden)
	if lv, ok := <-sub.Live(); ok {
		t.Fatalf("delivered to a token without the right: %+v", lv)
	}
}

// TestLiveSubscribersAtEveryCursor: subscribers at different cursors of
// one collection, served from the entries the relay keeps in memory (and
// the live messages it keeps encoded for subscribers at the same cursor),
// each receive every entry after their own cursor, once, in order, with
// the changes pushed.
func TestLiveSubscribersAtEveryCursor(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) { o.Limits.MaxBatch = 3 })
	w := tr.client("shop")
	// A first subscriber, so that the relay keeps the appends in memory.
	first := tr.client("shop")
	mustCall[transport.OK](t, first, &transport.Subscribe{Collection: "c"})
	data := map[uint64][]byte{}
	push := func(n int) {
		for range n {
			ed := storetest.NewEditor(t, "")
			ch := ed.Edit(map[string]any{"n": len(data)})
			ack := mustCall[transport.Ack](t, w, pushOf("c", 0, rec(fmt.Sprintf("r%d", len(data)), ch)))
			data[ack.Seq] = ch
		}
	}
	push(12)
	type sub struct {
		c    *transport.Client
		next uint64 // the seq it must receive next
	}
	subs := []*sub{{c: first, next: 1}}
	for _, cursor := range []uint64{0, 2, 5, 9, 10, 11, 11, 12} {
		c := tr.client("shop")
		mustCall[transport.OK](t, c, &transport.Subscribe{Collection: "c", Cursor: cursor})
		subs = append(subs, &sub{c: c, next: cursor + 1})
	}
	receive := func(upTo uint64) {
		t.Helper()
		for i, s := range subs {
			for s.next <= upTo {
				lv := nextLive(t, s.c)
				for _, r := range lv.Records {
					if r.Seq != s.next || r.Record != fmt.Sprintf("r%d", r.Seq-1) || !bytes.Equal(r.Data, data[r.Seq]) {
						t.Fatalf("subscriber %d got %s at seq %d, want r%d at seq %d with its changes", i, r.Record, r.Seq, s.next-1, s.next)
					}
					s.next++
				}
				if lv.Next != s.next-1 {
					t.Fatalf("subscriber %d: live message ends at %d, next %d", i, s.next-1, lv.Next)
				}
			}
		}
	}
	receive(12)
	push(7)
	receive(19)
}
