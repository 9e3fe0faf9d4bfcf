package pgstore_test

import (
	"bytes"
	"context"
	"log/slog"
	"math"
	"net"
	"sync/atomic"
	"testing"
	"time"
	_ "unsafe" // for go:linkname

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/pgtest"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/pgstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// The intervals docs/operations.md promises, seen to take effect: each
// test shortens one and waits for its effect, which nothing else causes.

// relaySweepInterval is package relay's sweepInterval, the heads poll's.
// Its SetSweepInterval is in relay's export_test.go, out of reach of this
// package's tests; linkname reaches the variable itself.
//
//go:linkname relaySweepInterval github.com/ferrysync/ferry/relay.sweepInterval
var relaySweepInterval time.Duration

// await waits for ch, failing the test with what after a deadline that
// only turns a hang into a failure.
func await(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal(what)
	}
}

// onMessage is a log handler that sends on ch each record with message
// msg, if ch has room.
type onMessage struct {
	msg string
	ch  chan struct{}
}

func (h onMessage) Enabled(context.Context, slog.Level) bool { return true }
func (h onMessage) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
	return nil
}
func (h onMessage) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h onMessage) WithGroup(string) slog.Handler      { return h }

// notifyDropper dials connections that break on the first write holding a
// NOTIFY, before it reaches the server: a relay that died between its
// commit and its notification.
type notifyDropper struct{ dropped atomic.Int32 }

func (d *notifyDropper) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &notifyDropConn{Conn: c, d: d}, nil
}

type notifyDropConn struct {
	net.Conn
	d *notifyDropper
}

func (c *notifyDropConn) Write(p []byte) (int, error) {
	// A broken connection prepares the statement again on the next, so
	// every NOTIFY's text goes by here.
	if bytes.Contains(p, []byte("pg_notify")) {
		c.d.dropped.Add(1)
		c.Conn.Close()
		return 0, net.ErrClosed
	}
	return c.Conn.Write(p)
}

// readsStore tells the test of each empty read of the log, so that it
// knows a subscriber has read the log and waits for a wake-up. The test
// counts them: empty is buffered beyond what it needs.
type readsStore struct {
	*pgstore.Store
	empty chan struct{}
}

func (s *readsStore) Log(ctx context.Context, c relay.Coll, after uint64, limit int) ([]relay.LogEntry, error) {
	l, err := s.Store.Log(ctx, c, after, limit)
	if err == nil && len(l) == 0 {
		select {
		case s.empty <- struct{}{}:
		default:
		}
	}
	return l, err
}

// An append whose NOTIFY is lost (the appending store's connection breaks
// on it) still reaches a subscriber on another relay, by that relay's
// periodic poll of the collections' heads, with no sweep called by hand.
func TestLostNotificationFoundByHeadsPoll(t *testing.T) {
	old := relaySweepInterval
	relaySweepInterval = 50 * time.Millisecond
	t.Cleanup(func() { relaySweepInterval = old }) // after the relay's Close
	schema := pgtest.Schema(t)
	st1 := &readsStore{Store: open(t, schema, nil), empty: make(chan struct{}, 16)}
	var d notifyDropper
	notifyFailed := make(chan struct{}, 1)
	o := pgstore.Options{Logger: slog.New(onMessage{msg: "notifying other relays failed; they will find the change at their next sweep", ch: notifyFailed})}
	pgstore.SetDial(&o, d.dial)
	st2 := open(t, schema, &o)

	cl := &cluster{t: t, schema: schema, app: relay.NewApp("shop")}
	tok, err := relay.IssueToken(cl.app, relay.TokenRequest{Subject: "tester", TTL: time.Hour, Read: []string{"*"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cl.token = tok
	auth, err := relay.NewAuth([]relay.App{cl.app}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl.urls = []string{serveRelay(t, &relay.Options{Store: st1, Auth: auth, PingInterval: -1})}
	sub := cl.dial(0, "sub")
	must[transport.OK](t, sub, &transport.Subscribe{Collection: "c"})
	// The subscriber reads the empty log and waits; a sweep that has not
	// seen the collection yet wakes it to read again. After that only a
	// sweep that reads a head that moved wakes it.
	for _, what := range []string{"the subscriber never read the log", "no sweep woke the subscriber"} {
		select {
		case <-st1.empty:
		case <-time.After(10 * time.Second): // only turns a hang into a failure
			t.Fatal(what)
		}
	}

	ed := storetest.NewEditor(t, "aaaa")
	data := ed.Edit(map[string]any{"n": int64(1)})
	infos, err := crdt.ParseChanges(data)
	if err != nil {
		t.Fatal(err)
	}
	c := relay.Coll{Tenant: cl.app.ID, Collection: "c"}
	if _, err := st2.Append(bg(), c, 0, time.Now(), []relay.Entry{{Record: "w", Changes: data, Hashes: []crdt.Hash{infos[0].Hash}, Heads: ed.Doc.Heads()}}); err != nil {
		t.Fatal(err)
	}
	sent := func() float64 { return counter(t, st2, "ferry_postgres_notifications_sent_total", nil) }
	failed := func() float64 { return counter(t, st2, "ferry_postgres_notifications_failed_total", nil) }
	await(t, notifyFailed, "the append's NOTIFY never failed")
	if n, f := sent(), failed(); n != 0 || f == 0 || d.dropped.Load() == 0 {
		t.Fatalf("%v NOTIFYs sent, %v failed, %d dropped: the test tested nothing", n, f, d.dropped.Load())
	}

	lv := nextLive(t, sub)
	if len(lv.Records) != 1 || lv.Records[0].Seq != 1 || lv.Records[0].Record != "w" {
		t.Fatalf("live: %+v, want entry 1 of record w", lv.Records)
	}
	if n := counter(t, st1.Store, "ferry_postgres_notifications_received_total", nil); n != 0 {
		t.Fatalf("the subscriber's relay received %v notifications: the poll was not what woke it", n)
	}
}

// The store reads the database's clock again on its own: once this
// machine's clock is stepped an hour ahead, the exported offset says so
// after the next reading, with nothing but the interval calling for it,
// and the store's clock stays the database's.
func TestClockReadAgain(t *testing.T) {
	read := make(chan struct{}, 1)
	t.Cleanup(pgstore.SetClockInterval(20*time.Millisecond, func() {
		select {
		case read <- struct{}{}:
		default:
		}
	})) // after the store's Close
	var skew atomic.Int64
	var o pgstore.Options
	// The step moves the monotonic reading too, so only a new reading of
	// the database's clock can tell the offset changed.
	pgstore.SetLocalClock(&o, func() time.Time { return time.Now().Add(time.Duration(skew.Load())) })
	s := open(t, pgtest.Schema(t), &o)
	offset := func() float64 { return counter(t, s, "ferry_postgres_clock_offset_seconds", nil) }
	if off := offset(); math.Abs(off) > 60 {
		t.Fatalf("offset %vs before the step, want about 0: the database runs on this machine", off)
	}

	skew.Store(int64(time.Hour))
	// A reading signalled now may have begun before the step; the one
	// after it began after the step.
	select {
	case <-read:
	default:
	}
	for range 2 {
		await(t, read, "the database's clock was not read again after this machine's clock moved an hour ahead")
	}
	if off := offset(); math.Abs(off+3600) > 60 {
		t.Fatalf("offset %vs after this machine's clock moved an hour ahead and the database's was read again, want about -3600", off)
	}
	if d := s.Now().Sub(time.Now()); d.Abs() > time.Minute {
		t.Fatalf("the store's clock is %v off the database's after the step", d)
	}
}
