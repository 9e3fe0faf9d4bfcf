package pgstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/pgtest"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/pgstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// serveRelay serves a relay made with o over HTTP for the rest of the
// test, and returns its devices' URL. Once the test ends, the relay is
// shut down, then each of closers runs.
func serveRelay(t *testing.T, o *relay.Options, closers ...func()) string {
	t.Helper()
	srv, err := relay.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
		hs.Close()
		for _, c := range closers {
			c()
		}
	})
	return "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws"
}

// Relays in this process, each with a store of its own on one schema: as
// separate relay processes would be, sharing nothing but the database.

type cluster struct {
	t      *testing.T
	schema string
	app    relay.App
	token  string
	urls   []string
}

// clock is a settable clock, standing for the database's in the tests
// that drive lease expiry.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newCluster starts n relays; now[i], if given, is relay i's clock
// (default: its store's, the database's).
func newCluster(t *testing.T, n int, now ...func() time.Time) *cluster {
	t.Helper()
	cl := &cluster{t: t, schema: pgtest.Schema(t), app: relay.NewApp("shop")}
	issued := time.Now()
	if len(now) > 0 {
		issued = now[0]()
	}
	tok, err := relay.IssueToken(cl.app, relay.TokenRequest{Subject: "tester", TTL: 24 * time.Hour, Write: []string{"*"}}, issued)
	if err != nil {
		t.Fatal(err)
	}
	cl.token = tok
	for i := range n {
		st := open(t, cl.schema, nil)
		var relayNow func() time.Time
		if i < len(now) {
			relayNow = now[i]
		}
		auth, err := relay.NewAuth([]relay.App{cl.app}, relayNow)
		if err != nil {
			t.Fatal(err)
		}
		o := &relay.Options{Store: st, Auth: auth, PingInterval: -1, RelayID: fmt.Sprint("relay-", i+1), Now: relayNow}
		cl.urls = append(cl.urls, serveRelay(t, o, func() { st.Close() }))
	}
	return cl
}

// dial connects a device to relay i.
func (cl *cluster) dial(i int, device string) *transport.Client {
	cl.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := transport.Dial(ctx, cl.urls[i], &transport.Options{PingInterval: -1})
	if err != nil {
		cl.t.Fatal(err)
	}
	c := transport.NewClient(conn, nil)
	cl.t.Cleanup(func() { c.Close() })
	if err := c.Call(ctx, &transport.Hello{APIKey: cl.app.APIKey, Token: cl.token, ReplicaID: device, Versions: transport.SupportedVersions()}, &transport.Welcome{}); err != nil {
		cl.t.Fatal(err)
	}
	return c
}

func call[R any, PR interface {
	*R
	transport.Body
}](c *transport.Client, req transport.Body) (*R, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp := PR(new(R))
	err := c.Call(ctx, req, resp)
	return (*R)(resp), err
}

func must[R any, PR interface {
	*R
	transport.Body
}](t *testing.T, c *transport.Client, req transport.Body) *R {
	t.Helper()
	r, err := call[R, PR](c, req)
	if err != nil {
		t.Fatalf("%s: %v", req.MessageType(), err)
	}
	return r
}

func push(coll string, fence uint64, record string, data []byte) *transport.Push {
	return &transport.Push{Collection: coll, Fence: fence, Records: []transport.RecordChanges{{Record: record, Data: data}}}
}

func nextLive(t *testing.T, c *transport.Client) *transport.Live {
	t.Helper()
	select {
	case lv := <-c.Live():
		return lv
	case <-c.Done():
		t.Fatalf("connection ended: %v", c.Err())
	case <-time.After(20 * time.Second): // only turns a hang into a failure
		t.Fatal("no live message")
	}
	return nil
}

func wantCode(t *testing.T, what string, err error, code transport.Code) {
	t.Helper()
	var te *transport.Error
	if !errors.As(err, &te) || te.Code != code {
		t.Fatalf("%s: %v, want %s", what, err, code)
	}
}

// A holds the lease through relay 1 and stalls past its TTL; B takes it
// through relay 2. A's pushes with its old fence through relay 1 are
// refused, even once relay 1's clock is set back to before A's expiry
// (a relay machine whose clock is off), and nothing of A's is in the log
// after B's first entry.
func TestLeaseFencingAcrossRelays(t *testing.T) {
	db := &clock{t: time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)}
	var skew sync.Mutex
	var back time.Duration
	relay1 := func() time.Time { skew.Lock(); defer skew.Unlock(); return db.Now().Add(-back) }
	cl := newCluster(t, 2, relay1, db.Now)
	a, b := cl.dial(0, "device-a"), cl.dial(1, "device-b")

	la := must[transport.Lease](t, a, &transport.LeaseAcquire{Collection: "c", TTLMS: 1000})
	edA := storetest.NewEditor(t, "aa01")
	must[transport.Ack](t, a, push("c", la.Fence, "ra", edA.Edit(map[string]any{"n": 1})))

	db.Add(2 * time.Second) // A stalls past its TTL
	lb := must[transport.Lease](t, b, &transport.LeaseAcquire{Collection: "c", TTLMS: 60_000})
	if lb.Fence <= la.Fence {
		t.Fatalf("B's fence %d is not above A's %d", lb.Fence, la.Fence)
	}
	edB := storetest.NewEditor(t, "bb01")
	ackB := must[transport.Ack](t, b, push("c", lb.Fence, "rb", edB.Edit(map[string]any{"n": 1})))

	_, err := call[transport.Ack](a, push("c", la.Fence, "ra", edA.Edit(map[string]any{"n": 2})))
	wantCode(t, "A's push after B took the lease", err, transport.CodeStaleFence)
	skew.Lock()
	back = time.Hour // relay 1 now thinks A's lease has most of its second left
	skew.Unlock()
	_, err = call[transport.Ack](a, push("c", la.Fence, "ra2", storetest.NewEditor(t, "aa02").Edit(map[string]any{"n": 3})))
	wantCode(t, "A's push through a relay whose clock is behind", err, transport.CodeStaleFence)
	_, err = call[transport.Lease](a, &transport.LeaseRenew{Collection: "c", Fence: la.Fence, TTLMS: 1000})
	wantCode(t, "A's renewal through that relay", err, transport.CodeStaleFence)
	must[transport.Ack](t, b, push("c", lb.Fence, "rb", edB.Edit(map[string]any{"n": 2})))
	// B's live fence is B's alone: another device, through either relay,
	// cannot push with it.
	for i := range 2 {
		_, err = call[transport.Ack](cl.dial(i, "device-c"), push("c", lb.Fence, "rc", storetest.NewEditor(t, "cc01").Edit(map[string]any{"n": 1})))
		wantCode(t, fmt.Sprintf("another device's push with B's fence through relay %d", i+1), err, transport.CodeStaleFence)
	}

	ch := must[transport.Changes](t, cl.dial(1, "reader"), &transport.Pull{Collection: "c", Cursor: 1})
	var seenB bool
	for _, r := range ch.Records {
		switch {
		case r.Record == "rb":
			seenB = true
		case seenB:
			t.Fatalf("A's %s is in the log at seq %d, after B's entry %d", r.Record, r.Seq, ackB.Seq)
		}
	}
	if len(ch.Records) != 2 || !seenB {
		t.Fatalf("log after the first entry: %+v, want B's two entries", ch.Records)
	}
}

// A push through one relay reaches live subscribers on the others; a
// subscriber that disconnects and subscribes again through another relay,
// from its cursor, gets exactly what it missed, in order.
func TestLiveFanOutAcrossRelays(t *testing.T) {
	cl := newCluster(t, 3)
	w := cl.dial(0, "writer")
	s2 := cl.dial(1, "sub-2")
	s3 := cl.dial(2, "sub-3")
	must[transport.OK](t, s2, &transport.Subscribe{Collection: "c", Cursor: 0})
	must[transport.OK](t, s3, &transport.Subscribe{Collection: "c", Cursor: 0})

	ed := storetest.NewEditor(t, "ee01")
	recv := func(c *transport.Client, from, to uint64) uint64 {
		t.Helper()
		next := from
		for next < to {
			lv := nextLive(t, c)
			for _, r := range lv.Records {
				if r.Seq != next+1 {
					t.Fatalf("live entry %d after %d: one missed or repeated", r.Seq, next)
				}
				next = r.Seq
			}
		}
		return next
	}
	for i := 1; i <= 5; i++ {
		ack := must[transport.Ack](t, w, push("c", 0, "r", ed.Edit(map[string]any{"n": i})))
		if ack.Seq != uint64(i) {
			t.Fatalf("push %d got seq %d", i, ack.Seq)
		}
		recv(s2, uint64(i-1), uint64(i))
		recv(s3, uint64(i-1), uint64(i))
	}
	// Sub-2 goes away at cursor 5; seven more pushes land meanwhile.
	s2.Close()
	for i := 6; i <= 12; i++ {
		must[transport.Ack](t, w, push("c", 0, "r", ed.Edit(map[string]any{"n": i})))
	}
	recv(s3, 5, 12)
	back := cl.dial(2, "sub-2")
	must[transport.OK](t, back, &transport.Subscribe{Collection: "c", Cursor: 5})
	recv(back, 5, 12)
	must[transport.Ack](t, w, push("c", 0, "r", ed.Edit(map[string]any{"n": 13})))
	recv(back, 12, 13)
	recv(s3, 12, 13)
}

// Devices on different relays edit one record at once: every push is
// acknowledged (a device told "conflict" pushes again, as the protocol
// says), and the record holds every change, each stored once.
func TestConcurrentPushesAcrossRelays(t *testing.T) {
	cl := newCluster(t, 3)
	const devices, rounds = 6, 8
	var wg sync.WaitGroup
	heads := make([]crdt.Heads, devices)
	errs := make([]error, devices)
	for d := range devices {
		c := cl.dial(d%3, fmt.Sprint("dev-", d))
		ed := storetest.NewEditor(t, fmt.Sprintf("d0%02x", d+1))
		wg.Go(func() {
			for i := range rounds {
				data := ed.Edit(map[string]any{fmt.Sprint("f", d): i})
				for try := 0; ; try++ {
					_, err := call[transport.Ack](c, push("c", 0, "shared", data))
					var te *transport.Error
					if errors.As(err, &te) && te.Code == transport.CodeConflict && try < 20 {
						continue
					}
					if err != nil {
						errs[d] = err
						return
					}
					break
				}
			}
			heads[d] = ed.Doc.Heads()
		})
	}
	wg.Wait()
	for d, err := range errs {
		if err != nil {
			t.Fatalf("device %d: %v", d, err)
		}
	}
	ch := must[transport.Changes](t, cl.dial(1, "reader"), &transport.Pull{Collection: "c", Cursor: 0})
	if len(ch.Records) != 1 {
		t.Fatalf("fresh pull: %d records, want 1", len(ch.Records))
	}
	doc, err := crdt.Load(ch.Records[0].Data, "")
	if err != nil {
		t.Fatal(err)
	}
	for d, hs := range heads {
		for _, hh := range hs {
			if !doc.Has(hh) {
				t.Fatalf("device %d's last change %s is not in the record", d, hh)
			}
		}
	}
	if ch.Next != devices*rounds {
		t.Fatalf("log head %d, want %d: one entry per push", ch.Next, devices*rounds)
	}
}

// /healthz says so when the relay cannot reach the database, and recovers
// with it.
func TestHealthzReportsTheDatabase(t *testing.T) {
	var down atomic.Bool
	var o pgstore.Options
	pgstore.SetDial(&o, func(ctx context.Context, network, addr string) (net.Conn, error) {
		if down.Load() {
			return nil, errors.New("the network is down")
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	})
	schema := pgtest.Schema(t)
	st := open(t, schema, &o)
	auth, err := relay.NewAuth([]relay.App{relay.NewApp("shop")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relay.NewServer(&relay.Options{Store: st, Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	health := func() int {
		t.Helper()
		resp, err := http.Get(hs.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := health(); code != http.StatusOK {
		t.Fatalf("healthz with the database up: %d", code)
	}
	down.Store(true)
	if _, err := pgtest.Conn(t, "").Exec(context.Background(),
		"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", "ferry-relay/"+schema); err != nil {
		t.Fatal(err)
	}
	if code := health(); code != http.StatusServiceUnavailable {
		t.Fatalf("healthz with the database unreachable: %d, want 503", code)
	}
	down.Store(false)
	if code := health(); code != http.StatusOK {
		t.Fatalf("healthz once the database is back: %d", code)
	}
}

// Presence reaches devices on the other relays (by NOTIFY), and so does
// the goodbye a relay sends for a device whose connection ended.
func TestPresenceAcrossRelays(t *testing.T) {
	cl := newCluster(t, 2)
	ann := cl.dial(0, "ann-device")
	bob := cl.dial(1, "bob-device")
	must[transport.OK](t, bob, &transport.Subscribe{Collection: "c"})
	must[transport.OK](t, ann, &transport.Subscribe{Collection: "c"})
	state, err := cbor.Marshal(map[string]any{"__presence": map[string]any{"type": "snapshot", "state": map[string]any{"user": "ann"}}})
	if err != nil {
		t.Fatal(err)
	}
	// bob's subscription on relay 2 may start after ann's first message
	// went by: ann sends until bob hears, as a heartbeat would.
	var got *transport.Presence
	for try := 0; got == nil; try++ {
		if try == 200 {
			t.Fatal("bob, on relay 2, never heard ann's presence on relay 1")
		}
		must[transport.OK](t, ann, &transport.Presence{Collection: "c", Record: "r1", Data: state})
		select {
		case got = <-bob.Presence():
		case <-time.After(100 * time.Millisecond):
		}
	}
	if got.Peer != "ann-device" || got.Record != "r1" || !bytes.Equal(got.Data, state) {
		t.Fatalf("bob, on relay 2, got %+v", got)
	}
	ann.Close()
	for {
		select {
		case p := <-bob.Presence():
			var env struct {
				P struct {
					Type string `cbor:"type"`
				} `cbor:"__presence"`
			}
			if cbor.Unmarshal(p.Data, &env) != nil || p.Peer != "ann-device" {
				t.Fatalf("bob got %+v", p)
			}
			if env.P.Type == "goodbye" {
				return
			}
		case <-time.After(20 * time.Second): // only turns a hang into a failure
			t.Fatal("bob never heard that ann left relay 1")
		}
	}
}
