package relay_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

func TestPushPullRoundTrip(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	a, b := tr.client("shop"), tr.client("shop")
	ed := storetest.NewEditor(t, "aa01")

	c1 := ed.Edit(map[string]any{"name": "Tea", "qty": 3})
	ack := mustCall[transport.Ack](t, a, pushOf("products", 0, rec("p1", c1)))
	if ack.Seq != 1 || len(ack.Records) != 1 || ack.Records[0].Record != "p1" {
		t.Fatalf("ack = %+v", ack)
	}
	heads, _ := crdt.HeadsFromSlices(ack.Records[0].Heads)
	if !heads.Equal(ed.Doc.Heads()) {
		t.Fatalf("acked heads %v, device has %v", heads, ed.Doc.Heads())
	}

	// A fresh device gets a snapshot.
	ch := mustCall[transport.Changes](t, b, &transport.Pull{Collection: "products"})
	if len(ch.Records) != 1 || !ch.Records[0].Snapshot || ch.Next != 1 || ch.More {
		t.Fatalf("fresh pull = %+v", ch)
	}
	if f := storetest.FieldsAfter(t, ch.Records[0].Data); f["name"] != "Tea" || f["qty"] != int64(3) {
		t.Fatalf("snapshot fields = %v", f)
	}

	// Later changes come from the log, after the cursor.
	c2 := ed.Edit(map[string]any{"qty": 4})
	if ack := mustCall[transport.Ack](t, a, pushOf("products", 0, rec("p1", c2))); ack.Seq != 2 {
		t.Fatalf("second ack seq %d", ack.Seq)
	}
	ch2 := mustCall[transport.Changes](t, b, &transport.Pull{Collection: "products", Cursor: ch.Next})
	if len(ch2.Records) != 1 || ch2.Records[0].Snapshot || ch2.Records[0].Seq != 2 || ch2.Next != 2 {
		t.Fatalf("incremental pull = %+v", ch2)
	}
	if f := storetest.FieldsAfter(t, ch.Records[0].Data, ch2.Records[0].Data); f["qty"] != int64(4) {
		t.Fatalf("after incremental pull: %v", f)
	}
	// Nothing new: an empty answer at the same cursor.
	ch3 := mustCall[transport.Changes](t, b, &transport.Pull{Collection: "products", Cursor: 2})
	if len(ch3.Records) != 0 || ch3.Next != 2 || ch3.More {
		t.Fatalf("empty pull = %+v", ch3)
	}
}

func TestFreshPullPagesThroughSnapshots(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	a := tr.client("shop")
	for i := 0; i < 7; i++ {
		ed := storetest.NewEditor(t, fmt.Sprintf("%04x", i+1))
		mustCall[transport.Ack](t, a, pushOf("c", 0, rec(fmt.Sprintf("r%d", i), ed.Edit(map[string]any{"i": i}))))
	}
	var got []string
	var first uint64
	after := ""
	for page := 0; ; page++ {
		ch := mustCall[transport.Changes](t, a, &transport.Pull{Collection: "c", Limit: 3, After: after})
		if page == 0 {
			first = ch.Next
		}
		for _, r := range ch.Records {
			got = append(got, r.Record)
		}
		if !ch.More {
			break
		}
		after = ch.After
	}
	if strings.Join(got, ",") != "r0,r1,r2,r3,r4,r5,r6" || first != 7 {
		t.Fatalf("pages gave %v, first next %d", got, first)
	}
}

func TestPushIsIdempotentAndValidated(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	a := tr.client("shop")
	ed := storetest.NewEditor(t, "aa02")
	c1 := ed.Edit(map[string]any{"v": 1})
	c2 := ed.Edit(map[string]any{"v": 2})

	// Out of order: c2 depends on c1, which the relay lacks.
	if _, err := call[transport.Ack](t, a, pushOf("c", 0, rec("r", c2))); !errors.Is(err, transport.ErrInvalidChange) {
		t.Fatalf("push of c2 before c1 = %v, want invalid_change", err)
	}
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", c1)))
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", c2)))

	// Duplicates are acknowledged, not stored again.
	ack := mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", c1), rec("r", c2)))
	if ack.Seq != 2 {
		t.Fatalf("duplicate push moved the log to %d", ack.Seq)
	}
	log, _ := tr.store.Log(context.Background(), relay.Coll{Tenant: "shop", Collection: "c"}, 0, 100)
	if len(log) != 2 {
		t.Fatalf("log has %d entries, want 2", len(log))
	}

	// Garbage, truncation and a bad record ID are refused; nothing stored.
	for name, p := range map[string]*transport.Push{
		"garbage":   pushOf("c", 0, rec("r", []byte("definitely not automerge"))),
		"truncated": pushOf("c", 0, rec("r", ed.Edit(map[string]any{"v": 3})[:20])),
		"bomb":      pushOf("c", 0, rec("r", []byte{0xdd, 0xff, 0xff, 0xff, 0xff})),
		"bad id":    pushOf("c", 0, rec("tab\there", c1)),
		// One bad record spoils the whole push, good ones included.
		"mixed": pushOf("c", 0, rec("other", storetest.NewEditor(t, "bb01").Edit(map[string]any{"x": 1})), rec("r", []byte{1, 2, 3})),
	} {
		if _, err := call[transport.Ack](t, a, p); err == nil {
			t.Errorf("%s: push accepted", name)
		}
	}
	if h, _ := tr.store.Head(context.Background(), relay.Coll{Tenant: "shop", Collection: "c"}); h != 2 {
		t.Fatalf("refused pushes moved the log to %d", h)
	}
	// And the connection still works.
	mustCall[transport.Changes](t, a, &transport.Pull{Collection: "c"})
}

func TestConcurrentPushersLoseNothing(t *testing.T) {
	onStores(t, concurrentPushers)
}

func concurrentPushers(t *testing.T, store relay.Store, tweak func(*relay.Options)) {
	tr := newTestRelay(t, store, tweak)
	const clients, pushes = 50, 10
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := tr.client("shop")
			// Half the clients share one hot record; the rest own theirs.
			id := fmt.Sprint("own-", i)
			if i%2 == 0 {
				id = "hot"
			}
			ed := storetest.NewEditor(t, fmt.Sprintf("%04x", 0x100+i))
			for j := 0; j < pushes; j++ {
				if _, err := call[transport.Ack](t, c, pushOf("c", 0, rec(id, ed.Edit(map[string]any{fmt.Sprint("k", i): j})))); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	log, err := tr.store.Log(context.Background(), relay.Coll{Tenant: "shop", Collection: "c"}, 0, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	if len(log) != clients*pushes {
		t.Fatalf("log has %d entries, want %d", len(log), clients*pushes)
	}
	for i, e := range log {
		if e.Seq != uint64(i+1) {
			t.Fatalf("entry %d has seq %d", i, e.Seq)
		}
	}
	// The hot record holds every client's last write.
	doc, _, _ := relay.Document(context.Background(), tr.store, relay.Coll{Tenant: "shop", Collection: "c"}, "hot")
	f := storetest.FieldsAfter(t, doc)
	for i := 0; i < clients; i += 2 {
		if f[fmt.Sprint("k", i)] != int64(pushes-1) {
			t.Fatalf("hot record lost client %d's writes: %v", i, f)
		}
	}
}

func TestAppsNeverSeeEachOther(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	shop, rival := tr.client("shop"), tr.client("rival")
	mustCall[transport.Ack](t, rival, pushOf("notes", 0, rec("secret", storetest.NewEditor(t, "cc01").Edit(map[string]any{"plan": "x"}))))
	ch := mustCall[transport.Changes](t, shop, &transport.Pull{Collection: "notes"})
	if len(ch.Records) != 0 || ch.Next != 0 {
		t.Fatalf("shop sees rival's notes: %+v", ch)
	}
	ch = mustCall[transport.Changes](t, shop, &transport.Pull{Collection: "notes", Cursor: 0})
	if len(ch.Records) != 0 {
		t.Fatal("leak")
	}
	// Rival's token with shop's API key is refused.
	if _, _, err := tr.dial(tr.apps["shop"].APIKey, tr.tokens["rival"], "x"); !errors.Is(err, transport.ErrUnauthenticated) {
		t.Fatalf("cross-app token: %v", err)
	}
}

func TestAuthRefusals(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	shop := tr.apps["shop"]
	good := tr.tokens["shop"]
	expired := tr.token("shop", relay.TokenRequest{Subject: "old", TTL: time.Minute, Write: []string{"*"}})
	forged := good[:len(good)-4] + "AAAA"
	otherSecret := relay.App{ID: "shop", APIKey: shop.APIKey, Secret: strings.Repeat("x", 40)}
	impostor, _ := relay.IssueToken(otherSecret, relay.TokenRequest{Subject: "eve", TTL: time.Hour, Write: []string{"*"}}, tr.clock.Now())
	tr.clock.Advance(2 * time.Minute)

	for name, tc := range map[string]struct {
		key, tok string
		want     error
	}{
		"forged":          {shop.APIKey, forged, transport.ErrUnauthenticated},
		"wrong secret":    {shop.APIKey, impostor, transport.ErrUnauthenticated},
		"expired":         {shop.APIKey, expired, transport.ErrTokenExpired},
		"unknown api key": {"fk_nope", good, transport.ErrUnauthenticated},
		"no token":        {shop.APIKey, "", transport.ErrUnauthenticated},
	} {
		_, _, err := tr.dial(tc.key, tc.tok, "r1")
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: dial = %v, want %v", name, err, tc.want)
		}
	}
	if _, _, err := tr.dial(shop.APIKey, good, "r1"); err != nil {
		t.Fatalf("good token refused after bad ones: %v", err)
	}
}

func TestRightsAndTokenRefresh(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	shop := tr.apps["shop"]
	ro := tr.token("shop", relay.TokenRequest{Subject: "viewer", TTL: 10 * time.Minute, Read: []string{"catalog"}})
	c, _, err := tr.dial(shop.APIKey, ro, "r1")
	if err != nil {
		t.Fatal(err)
	}
	data := storetest.NewEditor(t, "dd01").Edit(map[string]any{"x": 1})
	if _, err := call[transport.Ack](t, c, pushOf("catalog", 0, rec("r", data))); !errors.Is(err, transport.ErrForbidden) {
		t.Fatalf("read-only push = %v, want forbidden", err)
	}
	if _, err := call[transport.Changes](t, c, &transport.Pull{Collection: "orders"}); !errors.Is(err, transport.ErrForbidden) {
		t.Fatalf("pull of an ungranted collection = %v, want forbidden", err)
	}
	if _, err := call[transport.Lease](t, c, &transport.LeaseAcquire{Collection: "catalog", TTLMS: 1000}); !errors.Is(err, transport.ErrForbidden) {
		t.Fatalf("read-only lease = %v, want forbidden", err)
	}
	mustCall[transport.Changes](t, c, &transport.Pull{Collection: "catalog"})

	// The token expires while connected: requests are refused until a
	// fresh token arrives on the same connection.
	tr.clock.Advance(11 * time.Minute)
	if _, err := call[transport.Changes](t, c, &transport.Pull{Collection: "catalog"}); !errors.Is(err, transport.ErrTokenExpired) {
		t.Fatalf("pull with expired token = %v", err)
	}
	if _, err := call[transport.OK](t, c, &transport.Auth{Token: "junk"}); !errors.Is(err, transport.ErrUnauthenticated) {
		t.Fatalf("auth with junk = %v", err)
	}
	rw := tr.token("shop", relay.TokenRequest{Subject: "viewer", TTL: 10 * time.Minute, Write: []string{"catalog"}})
	mustCall[transport.OK](t, c, &transport.Auth{Token: rw})
	mustCall[transport.Ack](t, c, pushOf("catalog", 0, rec("r", data)))
}

func TestLeasesAndFencing(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	a, _, _ := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "dev-a")
	b, _, _ := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "dev-b")
	ea, eb := storetest.NewEditor(t, "ee01"), storetest.NewEditor(t, "ee02")

	la := mustCall[transport.Lease](t, a, &transport.LeaseAcquire{Collection: "c", TTLMS: 10_000})
	if _, err := call[transport.Lease](t, b, &transport.LeaseAcquire{Collection: "c", TTLMS: 10_000}); !errors.Is(err, transport.ErrLeaseHeld) {
		t.Fatalf("second acquire = %v, want lease_held", err)
	}
	mustCall[transport.Ack](t, a, pushOf("c", la.Fence, rec("r", ea.Edit(map[string]any{"by": "a"}))))

	// The holder vanishes without releasing; the lease expires.
	tr.clock.Advance(11 * time.Second)
	lb := mustCall[transport.Lease](t, b, &transport.LeaseAcquire{Collection: "c", TTLMS: 10_000})
	if lb.Fence <= la.Fence {
		t.Fatalf("fence did not grow: %d then %d", la.Fence, lb.Fence)
	}
	if _, err := call[transport.Ack](t, a, pushOf("c", la.Fence, rec("r", ea.Edit(map[string]any{"by": "a2"})))); !errors.Is(err, transport.ErrStaleFence) {
		t.Fatalf("push with stale fence = %v", err)
	}
	if _, err := call[transport.Lease](t, a, &transport.LeaseRenew{Collection: "c", Fence: la.Fence, TTLMS: 1000}); !errors.Is(err, transport.ErrStaleFence) {
		t.Fatalf("renew with stale fence = %v", err)
	}
	mustCall[transport.Ack](t, b, pushOf("c", lb.Fence, rec("r2", eb.Edit(map[string]any{"by": "b"}))))
	renewed := mustCall[transport.Lease](t, b, &transport.LeaseRenew{Collection: "c", Fence: lb.Fence, TTLMS: 20_000})
	if renewed.Fence != lb.Fence || renewed.ExpiresMS <= lb.ExpiresMS {
		t.Fatalf("renew = %+v after %+v", renewed, lb)
	}

	// A waiter gets the lease as soon as the holder releases it.
	waiting := make(chan struct{}, 1)
	*tr.srv.HookLeaseWaiting() = func(relay.Coll) { waiting <- struct{}{} }
	ended := make(chan struct{}, 4)
	*tr.srv.HookSessionEnded() = func() { ended <- struct{}{} }
	got := make(chan *transport.Lease, 1)
	go func() {
		l, err := call[transport.Lease](t, a, &transport.LeaseAcquire{Collection: "c", TTLMS: 10_000, WaitMS: 30_000})
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	<-waiting
	mustCall[transport.OK](t, b, &transport.LeaseRelease{Collection: "c", Fence: lb.Fence})
	l := <-got
	if l == nil || l.Fence <= lb.Fence {
		t.Fatalf("waiter got %+v", l)
	}

	// Disconnecting frees a lease at once.
	a.Close()
	<-ended
	mustCall[transport.Lease](t, b, &transport.LeaseAcquire{Collection: "c", TTLMS: 1000})
}

// A lease is its holder's: another device of the tenant that knows the
// fence (fences are small, guessable numbers) can neither renew nor release
// it.
func TestLeaseBoundToHolder(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	key := tr.apps["shop"].APIKey
	dial := func(subject, replica string) *transport.Client {
		t.Helper()
		c, _, err := tr.dial(key, tr.token("shop", relay.TokenRequest{Subject: subject, TTL: time.Hour, Write: []string{"*"}}), replica)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b, a2 := dial("alice", "dev-a"), dial("bob", "dev-b"), dial("alice", "dev-a2")
	la := mustCall[transport.Lease](t, a, &transport.LeaseAcquire{Collection: "c", TTLMS: 10_000})

	for name, other := range map[string]*transport.Client{"another subject": b, "another replica of the subject": a2} {
		if _, err := call[transport.Lease](t, other, &transport.LeaseRenew{Collection: "c", Fence: la.Fence, TTLMS: 300_000}); !errors.Is(err, transport.ErrStaleFence) {
			t.Fatalf("%s renews the lease: %v, want stale_fence", name, err)
		}
		if _, err := call[transport.OK](t, other, &transport.LeaseRelease{Collection: "c", Fence: la.Fence}); !errors.Is(err, transport.ErrStaleFence) {
			t.Fatalf("%s releases the lease: %v, want stale_fence", name, err)
		}
	}
	// Nor push with it: the store would take any push carrying the live
	// lease's fence.
	for name, other := range map[string]*transport.Client{"another subject": b, "another replica of the subject": a2} {
		if _, err := call[transport.Ack](t, other, pushOf("c", la.Fence, rec("x", storetest.NewEditor(t, "ef02").Edit(map[string]any{"by": name})))); !errors.Is(err, transport.ErrStaleFence) {
			t.Fatalf("%s pushes with the holder's fence: %v, want stale_fence", name, err)
		}
	}
	// Still held by a, and not extended: it lapses when a's TTL runs out.
	if _, err := call[transport.Lease](t, b, &transport.LeaseAcquire{Collection: "c", TTLMS: 10_000}); !errors.Is(err, transport.ErrLeaseHeld) {
		t.Fatalf("acquire after the refused release = %v, want lease_held", err)
	}
	mustCall[transport.Ack](t, a, pushOf("c", la.Fence, rec("r", storetest.NewEditor(t, "ef01").Edit(map[string]any{"by": "a"}))))
	tr.clock.Advance(10 * time.Second)
	lb := mustCall[transport.Lease](t, b, &transport.LeaseAcquire{Collection: "c", TTLMS: 10_000})
	// And the new holder's lease is as safe from a.
	if _, err := call[transport.OK](t, a, &transport.LeaseRelease{Collection: "c", Fence: lb.Fence}); !errors.Is(err, transport.ErrStaleFence) {
		t.Fatalf("old holder releases the new lease: %v, want stale_fence", err)
	}
	renewed := mustCall[transport.Lease](t, b, &transport.LeaseRenew{Collection: "c", Fence: lb.Fence, TTLMS: 20_000})
	if renewed.Fence != lb.Fence || renewed.ExpiresMS <= lb.ExpiresMS {
		t.Fatalf("holder's renew = %+v after %+v", renewed, lb)
	}

	// Holders are told apart when a subject holds the separator: subject
	// "team/x" with replica "dev" is not subject "team" with replica "x/dev".
	tx, ty := dial("team/x", "dev"), dial("team", "x/dev")
	lx := mustCall[transport.Lease](t, tx, &transport.LeaseAcquire{Collection: "d", TTLMS: 10_000})
	if _, err := call[transport.Lease](t, ty, &transport.LeaseRenew{Collection: "d", Fence: lx.Fence, TTLMS: 300_000}); !errors.Is(err, transport.ErrStaleFence) {
		t.Fatalf("a holder with the same joined name renews the lease: %v, want stale_fence", err)
	}
	if _, err := call[transport.Lease](t, ty, &transport.LeaseAcquire{Collection: "d", TTLMS: 10_000}); !errors.Is(err, transport.ErrLeaseHeld) {
		t.Fatalf("a holder with the same joined name acquires the held lease: %v, want lease_held", err)
	}
	mustCall[transport.OK](t, b, &transport.LeaseRelease{Collection: "c", Fence: lb.Fence})
	mustCall[transport.Lease](t, a, &transport.LeaseAcquire{Collection: "c", TTLMS: 1000})
}

func TestLiveSubscribers(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	w, sub := tr.client("shop"), tr.client("shop")
	ed := storetest.NewEditor(t, "ff01")
	mustCall[transport.Ack](t, w, pushOf("c", 0, rec("r", ed.Edit(map[string]any{"v": 1}))))
	mustCall[transport.OK](t, sub, &transport.Subscribe{Collection: "c", Cursor: 0})
	// Catch-up from the cursor, then live.
	lv := nextLive(t, sub)
	if lv.Records[0].Seq != 1 {
		t.Fatalf("catch-up = %+v", lv)
	}
	mustCall[transport.Ack](t, w, pushOf("c", 0, rec("r", ed.Edit(map[string]any{"v": 2}))))
	lv = nextLive(t, sub)
	if lv.Next != 2 || len(lv.Records) != 1 {
		t.Fatalf("live = %+v", lv)
	}
	if f := storetest.FieldsAfter(t, ed.Doc.Save()); f["v"] != int64(2) {
		t.Fatal(f)
	}
}

func TestSlowSubscriberIsCutOff(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.Limits.MaxBatch = 2
		o.MaxLag = 3
	})
	w, sub := tr.client("shop"), tr.client("shop")
	ed := storetest.NewEditor(t, "ff02")
	for i := 0; i < 10; i++ {
		mustCall[transport.Ack](t, w, pushOf("c", 0, rec("r", ed.Edit(map[string]any{"v": i}))))
	}
	mustCall[transport.OK](t, sub, &transport.Subscribe{Collection: "c", Cursor: 0})
	select {
	case <-sub.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("lagging subscriber not disconnected")
	}
	if !errors.Is(sub.Err(), transport.ErrSlowConsumer) {
		t.Fatalf("subscriber ended with %v, want slow_consumer", sub.Err())
	}
	// Others are unaffected, and it can resume from its cursor.
	mustCall[transport.Changes](t, w, &transport.Pull{Collection: "c", Cursor: 5})
}

func TestMalformedFramesCloseOnlyThatConnection(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) { o.Limits.MaxFrame, o.Limits.MaxRecord = 1<<20, 512<<10 })
	good := tr.client("shop")
	nested := []byte{0x84, 0xa1, 'v', 0x01, 0xa4, 't', 'y', 'p', 'e', 0xa4, 'p', 'u', 's', 'h', 0xa2, 'i', 'd', 0x01, 0xa4, 'b', 'o', 'd', 'y'}
	nested = append(nested, []byte(strings.Repeat("\xdc\xff\xff", 20000))...)
	for name, frame := range map[string][]byte{
		"msgpack length bomb": {0xdd, 0xff, 0xff, 0xff, 0xff},
		"20000 nested arrays": nested,
		"over max frame":      make([]byte, 2<<20),
		"empty":               {},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			ws, _, err := websocket.Dial(ctx, tr.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ws.CloseNow()
			ws.SetReadLimit(1 << 20)
			if err := ws.Write(ctx, websocket.MessageBinary, frame); err != nil {
				return // refused while writing: closed, as wanted
			}
			for {
				if _, _, err := ws.Read(ctx); err != nil {
					if st := websocket.CloseStatus(err); st != websocket.StatusPolicyViolation && st != websocket.StatusMessageTooBig {
						t.Fatalf("closed with %v (%v)", st, err)
					}
					break
				}
			}
		})
	}
	// A text frame before hello.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, tr.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.Write(ctx, websocket.MessageText, []byte(`{"type":"hello"}`))
	for {
		_, _, err := ws.Read(ctx)
		if err != nil {
			if st := websocket.CloseStatus(err); st != websocket.StatusPolicyViolation {
				t.Fatalf("text frame: closed with %v (%v), want policy violation", st, err)
			}
			break
		}
	}
	ws.CloseNow()
	// The relay still serves the well-behaved client.
	mustCall[transport.Ack](t, good, pushOf("c", 0, rec("r", storetest.NewEditor(t, "ab01").Edit(map[string]any{"ok": true}))))
}

func TestHealthAndMetrics(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	c := tr.client("shop")
	mustCall[transport.Ack](t, c, pushOf("c", 0, rec("r", storetest.NewEditor(t, "ac01").Edit(map[string]any{"v": 1}))))
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/metrics": `ferry_relay_requests_total{result="ok",type="push"} 1`,
	} {
		resp, err := http.Get(tr.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("%s: %d, body lacks %q", path, resp.StatusCode, want)
		}
	}
	for _, m := range []string{"ferry_relay_connections 1", "ferry_relay_log_entries 1", "ferry_relay_changes_accepted_total 1"} {
		resp, _ := http.Get(tr.http.URL + "/metrics")
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), m) {
			t.Errorf("metrics lack %q", m)
		}
	}
}

func TestShutdownEndsSessionsWithCode(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	c := tr.client("shop")
	mustCall[transport.Ack](t, c, pushOf("c", 0, rec("r", storetest.NewEditor(t, "ad01").Edit(map[string]any{"v": 1}))))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	<-c.Done()
	if !errors.Is(c.Err(), transport.ErrShuttingDown) {
		t.Fatalf("client ended with %v, want shutting_down", c.Err())
	}
	if _, _, err := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "late"); err == nil {
		t.Fatal("relay accepted a connection while shut down")
	}
}

func nextLive(t *testing.T, c *transport.Client) *transport.Live {
	t.Helper()
	select {
	case lv := <-c.Live():
		return lv
	case <-c.Done():
		t.Fatalf("connection ended: %v", c.Err())
	case <-time.After(10 * time.Second):
		t.Fatal("no live message")
	}
	return nil
}
