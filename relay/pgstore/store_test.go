package pgstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/pgtest"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/pgstore"
)

var coll = relay.Coll{Tenant: "app", Collection: "notes"}

func h(s string) crdt.Hash { return crdt.Hash(sha256.Sum256([]byte(s))) }

// newEntry moves record from base to version v.
func newEntry(record string, base crdt.Heads, v string) relay.Entry {
	return relay.Entry{Record: record, Base: base, Changes: []byte(record + "@" + v),
		Hashes: []crdt.Hash{h(record + v)}, Heads: crdt.Heads{h(record + v)}}
}

func bg() context.Context { return context.Background() }

// checkLog asserts the collection's log holds seqs 1..n, with no gap.
func checkLog(t *testing.T, st relay.Store, c relay.Coll, n int) []relay.LogEntry {
	t.Helper()
	l, err := st.Log(bg(), c, 0, n+10)
	if err != nil {
		t.Fatal(err)
	}
	if len(l) != n {
		t.Fatalf("log holds %d entries, want %d", len(l), n)
	}
	for i, e := range l {
		if e.Seq != uint64(i+1) {
			t.Fatalf("log entry %d has seq %d", i, e.Seq)
		}
	}
	return l
}

func counter(t *testing.T, s *pgstore.Store, name string, labels map[string]string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(s.Collector()); err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	metric:
		for _, m := range f.Metric {
			for k, v := range labels {
				if !hasLabel(m, k, v) {
					continue metric
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.Label {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

// Relays starting together on a fresh schema take turns migrating it: all
// open, every migration is applied once, and they share one incarnation.
func TestConcurrentOpensMigrateOnce(t *testing.T) {
	schema := pgtest.Schema(t)
	const n = 4
	stores := make([]*pgstore.Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			s, err := pgstore.Open(bg(), pgtest.DSN(t), &pgstore.Options{Schema: schema})
			stores[i], errs[i] = s, err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Open %d: %v", i, err)
		}
		defer stores[i].Close()
		if stores[i].Incarnation() != stores[0].Incarnation() {
			t.Fatalf("incarnations %q and %q", stores[i].Incarnation(), stores[0].Incarnation())
		}
	}
	var count, top int
	if err := pgtest.Conn(t, schema).QueryRow(bg(), "SELECT count(*), max(version) FROM ferry_migrations").Scan(&count, &top); err != nil {
		t.Fatal(err)
	}
	if count != pgstore.SchemaVersion() || top != pgstore.SchemaVersion() {
		t.Fatalf("ferry_migrations holds %d rows up to version %d, want %d", count, top, pgstore.SchemaVersion())
	}
}

// A schema written by a newer Ferry is refused, and left as it was.
func TestNewerSchemaRefused(t *testing.T) {
	schema := pgtest.Schema(t)
	s := open(t, schema, nil)
	if _, err := s.Append(bg(), coll, 0, time.Now(), []relay.Entry{newEntry("a", nil, "1")}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	conn := pgtest.Conn(t, schema)
	if _, err := conn.Exec(bg(), "INSERT INTO ferry_migrations (version, name) VALUES ($1, 'from the future')", pgstore.SchemaVersion()+1); err != nil {
		t.Fatal(err)
	}
	_, err := pgstore.Open(bg(), pgtest.DSN(t), &pgstore.Options{Schema: schema})
	if !errors.Is(err, relay.ErrNewerStoreFormat) {
		t.Fatalf("Open of a newer schema: %v, want ErrNewerStoreFormat", err)
	}
	var n int
	if err := conn.QueryRow(bg(), "SELECT count(*) FROM ferry_log").Scan(&n); err != nil || n != 1 {
		t.Fatalf("log after the refused Open: %d entries, %v", n, err)
	}
}

// Sequence numbers stay gap-free and unique with appends from several
// stores (several relay processes) into one collection at once.
func TestAppendsFromSeveralStores(t *testing.T) {
	schema := pgtest.Schema(t)
	stores := []*pgstore.Store{open(t, schema, nil), open(t, schema, nil), open(t, schema, nil)}
	const workers, rounds = 6, 15
	var mu sync.Mutex
	seen := map[uint64]string{}
	var failure atomic.Value
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			st := stores[w%len(stores)]
			for i := range rounds {
				es := []relay.Entry{newEntry(fmt.Sprintf("w%d-%d", w, i), nil, "1")}
				if i%3 == 0 {
					es = append(es, newEntry(fmt.Sprintf("w%d-%d-bis", w, i), nil, "1"))
				}
				head, err := st.Append(bg(), coll, 0, time.Now(), es)
				if err != nil {
					failure.Store(err)
					return
				}
				mu.Lock()
				for j, e := range es {
					seq := head - uint64(len(es)-1-j)
					if prev, dup := seen[seq]; dup {
						failure.Store(fmt.Errorf("seq %d given to %s and %s", seq, prev, e.Record))
					}
					seen[seq] = e.Record
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := failure.Load(); err != nil {
		t.Fatal(err)
	}
	for _, e := range checkLog(t, stores[1], coll, len(seen)) {
		if seen[e.Seq] != e.Record {
			t.Fatalf("seq %d holds %s, Append said %s", e.Seq, e.Record, seen[e.Seq])
		}
	}
}

// dropper dials connections it can cut at the worst moment: when the
// server's answer to an append arrives, so that the append is committed
// but the client never learns it.
type dropper struct {
	armed   atomic.Bool
	dropped atomic.Int32
}

func (d *dropper) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &dropConn{Conn: c, d: d}, nil
}

type dropConn struct {
	net.Conn
	d      *dropper
	append atomic.Bool // this connection has sent ferry_append
}

func (c *dropConn) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("ferry_append")) {
		c.append.Store(true)
	}
	return c.Conn.Write(p)
}

func (c *dropConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.append.Load() && appendAnswer(p[:n]) && c.d.armed.CompareAndSwap(true, false) {
		c.d.dropped.Add(1)
		c.Conn.Close()
		return 0, io.ErrUnexpectedEOF
	}
	return n, err
}

// appendAnswer reports whether b, messages from the server, holds the row
// ferry_append answers with: a DataRow of its four columns (the other
// queries on these connections answer one column).
func appendAnswer(b []byte) bool {
	for len(b) >= 5 {
		typ, n := b[0], int(binary.BigEndian.Uint32(b[1:5]))
		if n < 4 || len(b) < 1+n {
			return false
		}
		if typ == 'D' && n >= 6 && binary.BigEndian.Uint16(b[5:7]) == 4 {
			return true
		}
		b = b[1+n:]
	}
	return false
}

// An append whose answer is lost with its connection is retried, finds
// itself committed, and reports its head: nothing is applied twice, and
// the push is not refused as a conflict with itself.
func TestLostCommitIsNotAppliedTwice(t *testing.T) {
	var d dropper
	var o pgstore.Options
	pgstore.SetDial(&o, d.dial)
	s := open(t, pgtest.Schema(t), &o)
	l, err := s.Acquire(bg(), coll, "dev", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		name  string
		fence uint64
		e     relay.Entry
	}{
		{"a new record", 0, newEntry("a", nil, "1")},
		{"a fenced append to it", l.Fence, newEntry("a", crdt.Heads{h("a1")}, "2")},
	} {
		d.armed.Store(true)
		head, err := s.Append(bg(), coll, tc.fence, time.Now(), []relay.Entry{tc.e})
		if err != nil {
			t.Fatalf("%s: Append after a lost answer: %v", tc.name, err)
		}
		if d.dropped.Load() != int32(i+1) {
			t.Fatalf("%s: the answer was not dropped (%d drops): the test tested nothing", tc.name, d.dropped.Load())
		}
		if head != uint64(i+1) {
			t.Fatalf("%s: head %d, want %d", tc.name, head, i+1)
		}
	}
	checkLog(t, s, coll, 2)
	if n := counter(t, s, "ferry_postgres_retries_total", map[string]string{"op": "append"}); n < 2 {
		t.Fatalf("%v append retries counted, want 2", n)
	}
}

// Presence published through one Store reaches the others on the schema,
// bytes unchanged, and never comes back to its own.
func TestPresenceAcrossStores(t *testing.T) {
	schema := pgtest.Schema(t)
	a, b := open(t, schema, nil), open(t, schema, nil)
	toA, toB := make(chan relay.StoreEvent, 64), make(chan relay.StoreEvent, 64)
	defer a.Watch(func(e relay.StoreEvent) { toA <- e })()
	defer b.Watch(func(e relay.StoreEvent) { toB <- e })()
	msg := bytes.Repeat([]byte{0xfe, 0x01}, relay.MaxStorePresence/2)
	if err := a.PublishPresence(bg(), coll, msg); err != nil {
		t.Fatal(err)
	}
	for e := range toB {
		if e.Kind == relay.EventsMissed {
			continue
		}
		if e.Kind != relay.EventPresence || e.Coll != coll || e.Presence != string(msg) {
			t.Fatalf("B heard %+v", e)
		}
		break
	}
	if err := a.PublishPresence(bg(), coll, make([]byte, relay.MaxStorePresence+1)); err == nil {
		t.Fatal("an oversized presence was published")
	}
	// A's own presence does not come back to it: an append by B after it
	// is the first thing A hears.
	if _, err := b.Append(bg(), coll, 0, time.Now(), []relay.Entry{newEntry("a", nil, "1")}); err != nil {
		t.Fatal(err)
	}
	for e := range toA {
		if e.Kind == relay.EventsMissed {
			continue
		}
		if e.Kind != relay.EventAppended {
			t.Fatalf("A heard %+v before B's append", e)
		}
		break
	}
}

// Sessions the server ends (an administrator, a failover) are replaced:
// the pool finds them dead, or the call that meets one is retried.
func TestTerminatedSessionsAreReplaced(t *testing.T) {
	pgtest.CanCreateDatabases(t)
	schema := pgtest.Schema(t)
	s := open(t, schema, nil)
	a1 := newEntry("a", nil, "1")
	if _, err := s.Append(bg(), coll, 0, time.Now(), []relay.Entry{a1}); err != nil {
		t.Fatal(err)
	}
	conn := pgtest.Conn(t, "")
	var killed int
	err := conn.QueryRow(bg(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = $1`, "ferry-relay/"+schema).Scan(&killed)
	if err != nil || killed == 0 {
		t.Fatalf("terminated %d sessions: %v", killed, err)
	}
	if head, err := s.Append(bg(), coll, 0, time.Now(), []relay.Entry{newEntry("a", a1.Heads, "2")}); err != nil || head != 2 {
		t.Fatalf("Append after the sessions were terminated: %d, %v", head, err)
	}
	if _, err := s.Record(bg(), coll, "a"); err != nil {
		t.Fatal(err)
	}
	checkLog(t, s, coll, 2)
	if n := counter(t, s, "ferry_postgres_pool_max_connections", nil); n != 10 {
		t.Fatalf("pool bound %v, want the default 10", n)
	}
}

// Relays on one schema hear of each other's appends and releases, never of
// their own; after the listening connection is lost, they hear that they
// may have missed some, and go on hearing.
func TestEventsAcrossStores(t *testing.T) {
	schema := pgtest.Schema(t)
	var logA syncBuffer
	a := open(t, schema, &pgstore.Options{Logger: slog.New(slog.NewTextHandler(&logA, nil))})
	b := open(t, schema, nil)
	toA, toB := make(chan relay.StoreEvent, 64), make(chan relay.StoreEvent, 64)
	stopA := a.Watch(func(e relay.StoreEvent) { toA <- e })
	defer stopA()
	stopB := b.Watch(func(e relay.StoreEvent) { toB <- e })
	defer stopB()
	next := func(ch chan relay.StoreEvent, want relay.StoreEvent) {
		t.Helper()
		for {
			select {
			case e := <-ch:
				if e == want {
					return
				}
				if e.Kind != relay.EventsMissed {
					t.Fatalf("event %+v, want %+v", e, want)
				}
			case <-time.After(20 * time.Second): // only turns a hang into a failure
				t.Fatalf("no event %+v", want)
			}
		}
	}
	if _, err := b.Append(bg(), coll, 0, time.Now(), []relay.Entry{newEntry("a", nil, "1")}); err != nil {
		t.Fatal(err)
	}
	next(toA, relay.StoreEvent{Kind: relay.EventAppended, Coll: coll})
	l, err := b.Acquire(bg(), coll, "dev", time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Release(bg(), coll, "dev", l.Fence); err != nil {
		t.Fatal(err)
	}
	next(toA, relay.StoreEvent{Kind: relay.EventLeaseReleased, Coll: coll})
	// B's own notifications went out before A's next one: the first event
	// B hears is A's.
	other := relay.Coll{Tenant: "app", Collection: "other"}
	if _, err := a.Append(bg(), other, 0, time.Now(), []relay.Entry{newEntry("x", nil, "1")}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-toB:
		if e != (relay.StoreEvent{Kind: relay.EventAppended, Coll: other}) {
			t.Fatalf("B heard %+v first, want A's append to %v", e, other)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("B heard nothing of A's append")
	}

	conn := pgtest.Conn(t, "")
	if _, err := conn.Exec(bg(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE application_name = $1 AND query LIKE 'LISTEN%'`, "ferry-relay/"+schema); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-toA:
		if e.Kind != relay.EventsMissed {
			t.Fatalf("after the lost LISTEN connection: %+v, want EventsMissed", e)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no EventsMissed after the LISTEN connection was lost")
	}
	if _, err := b.Append(bg(), coll, 0, time.Now(), []relay.Entry{newEntry("a", crdt.Heads{h("a1")}, "2")}); err != nil {
		t.Fatal(err)
	}
	next(toA, relay.StoreEvent{Kind: relay.EventAppended, Coll: coll})
	if n := counter(t, a, "ferry_postgres_listen_reconnects_total", nil); n != 1 {
		t.Fatalf("%v LISTEN reconnects counted, want 1", n)
	}
	// The loss is a warning, and its end is said too: EventsMissed went
	// out after the reconnection, and the log line before it.
	logged := logA.String()
	if !strings.Contains(logged, "level=WARN msg=\"lost the connection that listens") ||
		!strings.Contains(logged, "level=INFO msg=\"listening for other relays' changes again\"") {
		t.Fatalf("relay A logged:\n%s", logged)
	}
}

// Heads reads many collections' heads at once, 0 for the unknown.
func TestHeads(t *testing.T) {
	s := open(t, pgtest.Schema(t), nil)
	other := relay.Coll{Tenant: "app", Collection: "other"}
	s.Append(bg(), coll, 0, time.Now(), []relay.Entry{newEntry("a", nil, "1"), newEntry("b", nil, "1")})
	s.Append(bg(), other, 0, time.Now(), []relay.Entry{newEntry("a", nil, "1")})
	got, err := s.Heads(bg(), []relay.Coll{other, {Tenant: "app", Collection: "none"}, coll, {Tenant: "a\x00", Collection: "b"}})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[1 0 2 0]" {
		t.Fatalf("Heads = %v, want [1 0 2 0]", got)
	}
}

// Leases are timed by the database's clock: a relay machine whose clock is
// an hour off reads the database's time all the same.
func TestClockIsTheDatabases(t *testing.T) {
	var o pgstore.Options
	pgstore.SetLocalClock(&o, func() time.Time { return time.Now().Add(-time.Hour) })
	s := open(t, pgtest.Schema(t), &o)
	conn := pgtest.Conn(t, "")
	var before, after time.Time
	if err := conn.QueryRow(bg(), "SELECT clock_timestamp()").Scan(&before); err != nil {
		t.Fatal(err)
	}
	now := s.Now()
	if err := conn.QueryRow(bg(), "SELECT clock_timestamp()").Scan(&after); err != nil {
		t.Fatal(err)
	}
	// The store's reading is off by at most half the round trip of its
	// query, far below this margin.
	const margin = time.Second
	if now.Before(before.Add(-margin)) || now.After(after.Add(margin)) {
		t.Fatalf("store's clock %v, database's between %v and %v", now, before, after)
	}
	if off := counter(t, s, "ferry_postgres_clock_offset_seconds", nil); off < 3500 || off > 3700 {
		t.Fatalf("clock offset metric %v s, want about 3600 (this machine an hour behind)", off)
	}
}

// A store restored from pg_dump into another database has the data, and a
// new incarnation, so devices know their cursors may be off.
func TestRestoreFromDumpChangesIncarnation(t *testing.T) {
	for _, tool := range []string{"pg_dump", "pg_restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("FERRY_REQUIRE_POSTGRES") != "" {
				t.Fatalf("%s is not installed", tool)
			}
			t.Skipf("%s is not installed", tool)
		}
	}
	pgtest.CanCreateDatabases(t)
	schema := pgtest.Schema(t)
	s := open(t, schema, nil)
	a1 := newEntry("a", nil, "1")
	for _, e := range []relay.Entry{a1, newEntry("b", nil, "1"), newEntry("a", a1.Heads, "2")} {
		if _, err := s.Append(bg(), coll, 0, time.Now(), []relay.Entry{e}); err != nil {
			t.Fatal(err)
		}
	}
	inc := s.Incarnation()
	s.Close()

	file := filepath.Join(t.TempDir(), "ferry.dump")
	if out, err := exec.Command("pg_dump", "--dbname", pgtest.DSN(t), "--schema", schema, "--format", "custom", "--file", file).CombinedOutput(); err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, out)
	}
	b := make([]byte, 4)
	rand.Read(b)
	db := "ferry_restore_" + hex.EncodeToString(b)
	admin := pgtest.Conn(t, "")
	if _, err := admin.Exec(bg(), "CREATE DATABASE "+db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)") })
	target := pgtest.WithDatabase(t, db)
	if out, err := exec.Command("pg_restore", "--dbname", target, "--no-owner", file).CombinedOutput(); err != nil {
		t.Fatalf("pg_restore: %v\n%s", err, out)
	}
	r, err := pgstore.Open(bg(), target, &pgstore.Options{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Incarnation() == inc || r.Incarnation() == "" {
		t.Fatalf("restored store's incarnation %q, want a new one (was %q)", r.Incarnation(), inc)
	}
	checkLog(t, r, coll, 3)
	rec, err := r.Record(bg(), coll, "a")
	if err != nil || string(rec.Data()) != "a@1a@2" {
		t.Fatalf("restored record a: %q, %v", rec.Data(), err)
	}
	if h, err := r.Append(bg(), coll, 0, time.Now(), []relay.Entry{newEntry("c", nil, "1")}); err != nil || h != 4 {
		t.Fatalf("Append to the restored store: %d, %v", h, err)
	}
	// The new incarnation stays.
	restored := r.Incarnation()
	r.Close()
	r2, err := pgstore.Open(bg(), target, &pgstore.Options{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if r2.Incarnation() != restored {
		t.Fatalf("incarnation changed again on reopen: %q, then %q", restored, r2.Incarnation())
	}
	// The original is untouched, incarnation and all.
	o := open(t, schema, nil)
	if o.Incarnation() != inc {
		t.Fatalf("original store's incarnation changed: %q, want %q", o.Incarnation(), inc)
	}
}

// The password of the connection string never shows in an error.
func TestPasswordNeverInErrors(t *testing.T) {
	const secret = "s3cret-Pa55word"
	for _, dsn := range []string{
		"postgres://ferry:" + secret + "@127.0.0.1:1/ferry?connect_timeout=2",
		"host=127.0.0.1 port=1 user=ferry password=" + secret + " dbname=ferry connect_timeout=2",
		"postgres://ferry:" + secret + "@127.0.0.1:1/ferry?sslmode=bogus",
	} {
		_, err := pgstore.Open(bg(), dsn, &pgstore.Options{RetryTimeout: time.Second})
		if err == nil {
			t.Fatalf("Open(%q) succeeded", dsn)
		}
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("error shows the password: %v", err)
		}
	}
}

// Names PostgreSQL text cannot hold are refused as invalid on writes, and
// found nowhere on reads, never sent to the database.
func TestNamesNotUTF8(t *testing.T) {
	s := open(t, pgtest.Schema(t), nil)
	bad := relay.Coll{Tenant: "app", Collection: "no\xfftes"}
	if _, err := s.Append(bg(), bad, 0, time.Now(), []relay.Entry{newEntry("a", nil, "1")}); !errors.Is(err, relay.ErrInvalidArg) {
		t.Fatalf("Append to a collection not UTF-8: %v", err)
	}
	if _, err := s.Append(bg(), coll, 0, time.Now(), []relay.Entry{newEntry("a\xff", nil, "1")}); !errors.Is(err, relay.ErrInvalidArg) {
		t.Fatalf("Append of a record not UTF-8: %v", err)
	}
	if _, err := s.Acquire(bg(), coll, "dev\xff", time.Minute, time.Now()); !errors.Is(err, relay.ErrInvalidArg) {
		t.Fatalf("Acquire by a holder not UTF-8: %v", err)
	}
	if _, err := s.Record(bg(), coll, "a\xff"); !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("Record not UTF-8: %v", err)
	}
	if h, err := s.Head(bg(), bad); err != nil || h != 0 {
		t.Fatalf("Head of a collection not UTF-8: %d, %v", h, err)
	}
	if l, err := s.Log(bg(), bad, 0, 10); err != nil || len(l) != 0 {
		t.Fatalf("Log of a collection not UTF-8: %v, %v", l, err)
	}
	if h, err := s.Head(bg(), coll); err != nil || h != 0 {
		t.Fatalf("the refused appends wrote: head %d, %v", h, err)
	}
}

// A schema name PostgreSQL would cut is refused; one whose channel name
// would be too long still hears the other relays.
func TestSchemaNameLengths(t *testing.T) {
	long := strings.Repeat("s", 64)
	if _, err := pgstore.Open(bg(), pgtest.DSN(t), &pgstore.Options{Schema: long}); !errors.Is(err, pgstore.ErrConfig) {
		t.Fatalf("Open with a 64-byte schema name: %v, want ErrConfig", err)
	}
	schema := pgtest.Schema(t) + strings.Repeat("x", 63-14)
	pgtest.DropAtCleanup(t, schema)
	a, b := open(t, schema, nil), open(t, schema, nil)
	heard := make(chan relay.StoreEvent, 8)
	stop := a.Watch(func(e relay.StoreEvent) { heard <- e })
	defer stop()
	if _, err := b.Append(bg(), coll, 0, time.Now(), []relay.Entry{newEntry("a", nil, "1")}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-heard:
		if e != (relay.StoreEvent{Kind: relay.EventAppended, Coll: coll}) {
			t.Fatalf("heard %+v", e)
		}
	case <-time.After(20 * time.Second): // only turns a hang into a failure
		t.Fatal("a relay on a schema with a long name heard nothing")
	}
}

// syncBuffer is a log destination the store's goroutines write to while
// the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
