package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/pgtest"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/pgstore"
	"github.com/ferrysync/ferry/transport"
)

// pgConfig writes a relay config with one app whose store is in schema.
func pgConfig(t *testing.T, dir, schema string) (string, relay.App) {
	t.Helper()
	app := relay.NewApp("shop")
	b, _ := json.Marshal(Config{Apps: []AppConfig{{App: app}}, LogLevel: "warn", Postgres: pgtest.DSN(t), PostgresSchema: schema})
	path := filepath.Join(dir, "relay.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, app
}

// pgDevice is a device editing the shared records through one relay or
// another, pulling the others' changes from its cursor.
type pgDevice struct {
	id     int
	docs   map[string]*crdt.Doc
	acked  map[string]crdt.Heads // the heads of each record the relay last acknowledged
	cursor uint64
	c      *transport.Client
	relay  int // the relay it is connected to, or next tries
}

const pgRecords = 4

func newPGDevice(t *testing.T, id int) *pgDevice {
	d := &pgDevice{id: id, docs: map[string]*crdt.Doc{}, acked: map[string]crdt.Heads{}, relay: id % 3}
	for r := range pgRecords {
		doc, err := crdt.New(fmt.Sprintf("%02x%02x", id+1, r+1))
		if err != nil {
			t.Fatal(err)
		}
		d.docs[fmt.Sprint("rec-", r)] = doc
	}
	return d
}

// relays are the relay processes' URLs, which change when one restarts.
type relays struct {
	mu   sync.Mutex
	urls []string
}

func (r *relays) url(i int) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.urls[i%len(r.urls)]
}

func (r *relays) set(i int, url string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.urls[i] = url
}

// connect (re)connects the device, trying the relays in turn from its own.
func (d *pgDevice) connect(t *testing.T, rs *relays, app relay.App, stop <-chan struct{}) bool {
	if d.c != nil {
		d.c.Close()
		d.c = nil
	}
	for try := 0; ; try++ {
		c, err := dialRelay(t, rs.url(d.relay), app, fmt.Sprint("device-", d.id))
		if err == nil {
			d.c = c
			return true
		}
		d.relay++ // that relay is down: try the next
		select {
		case <-stop:
			return false
		case <-time.After(time.Duration(min(try+1, 10)) * 50 * time.Millisecond):
		}
	}
}

// call makes one request with a bound; an error means "reconnect".
func (d *pgDevice) call(req, resp transport.Body) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return d.c.Call(ctx, req, resp)
}

// push sends record's changes since what the relay last acknowledged of
// this device's; with none, it returns a zero acked. The acked heads are
// the device's own at the push: once acknowledged, the store must hold
// them (the relay's heads in the ack may hold others' changes too, which
// this device has not pulled yet).
func (d *pgDevice) push(record string) (acked, error) {
	doc := d.docs[record]
	sent := doc.Heads()
	data, err := doc.ChangesSince(d.acked[record])
	if err != nil || len(data) == 0 {
		return acked{}, err
	}
	var ack transport.Ack
	if err := d.call(&transport.Push{Collection: "c", Records: []transport.RecordChanges{{Record: record, Data: data}}}, &ack); err != nil {
		return acked{}, err
	}
	d.acked[record] = sent
	return acked{record: record, heads: sent, seq: ack.Seq}, nil
}

// pull takes in the log after its cursor, to the head.
func (d *pgDevice) pull() error {
	for {
		var ch transport.Changes
		if err := d.call(&transport.Pull{Collection: "c", Cursor: d.cursor, After: ""}, &ch); err != nil {
			return err
		}
		for _, r := range ch.Records {
			doc := d.docs[r.Record]
			if doc == nil {
				return fmt.Errorf("pulled unknown record %q", r.Record)
			}
			if _, err := doc.Import(r.Data); err != nil {
				return fmt.Errorf("importing %s at seq %d: %w", r.Record, r.Seq, err)
			}
		}
		d.cursor = ch.Next
		if !ch.More {
			return nil
		}
	}
}

// Three relay processes on one database, eight devices spread across them
// editing four shared records: one relay is SIGKILLed and restarted in the
// middle of the pushes, and the PostgreSQL server is restarted (stopped at
// once, as a crash would) once. Every acknowledged change is in the store
// afterwards, the log has no gap and no number used twice, and every
// device ends with the same documents as the store.
func TestRelaysOnPostgres(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FERRY_KILL_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (set FERRY_KILL_SEED to reproduce)", seed)
	schema := pgtest.Schema(t)
	dir := t.TempDir()
	cfg, app := pgConfig(t, dir, schema)
	args := func(i int) []string {
		return []string{"--config", cfg, "--data", filepath.Join(dir, fmt.Sprint("data-", i)), "--addr", "127.0.0.1:0"}
	}
	procs := make([]*relayProc, 3)
	rs := &relays{urls: make([]string, 3)}
	for i := range procs {
		procs[i] = startRelay(t, args(i)...)
		rs.set(i, procs[i].url)
	}

	const devices = 8
	devs := make([]*pgDevice, devices)
	for i := range devs {
		devs[i] = newPGDevice(t, i)
	}
	var (
		mu      sync.Mutex
		all     []acked
		nAcks   atomic.Int64
		ackedCh = make(chan struct{}, 1024)
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		fails   atomic.Int64
	)
	for _, d := range devs {
		rng := rand.New(rand.NewPCG(seed, uint64(d.id)))
		wg.Go(func() {
			if !d.connect(t, rs, app, stop) {
				return
			}
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				rec := fmt.Sprint("rec-", rng.IntN(pgRecords))
				doc := d.docs[rec]
				doc.Set(crdt.Path{fmt.Sprintf("d%d-f%d", d.id, rng.IntN(3))}, n)
				doc.Commit("", time.Time{})
				err := d.pull()
				var a acked
				if err == nil {
					a, err = d.push(rec)
				}
				if err != nil {
					// The relay died, or the database restarted under it:
					// the push is unacknowledged, and goes again later
					// with the next edit of the record.
					fails.Add(1)
					if !d.connect(t, rs, app, stop) {
						return
					}
					continue
				}
				mu.Lock()
				all = append(all, a)
				mu.Unlock()
				nAcks.Add(1)
				select {
				case ackedCh <- struct{}{}:
				default:
				}
			}
		})
	}
	waitAcks := func(n int64) {
		t.Helper()
		deadline := time.After(2 * time.Minute) // only turns a hang into a failure
		for nAcks.Load() < n {
			select {
			case <-ackedCh:
			case <-deadline:
				t.Fatalf("only %d acks, waiting for %d", nAcks.Load(), n)
			}
		}
	}
	rng := rand.New(rand.NewPCG(seed, 99))
	waitAcks(int64(40 + rng.IntN(40)))
	procs[1].kill(t)
	t.Logf("relay 2 killed after %d acks", nAcks.Load())
	procs[1] = startRelay(t, args(1)...)
	rs.set(1, procs[1].url)
	waitAcks(nAcks.Load() + int64(30+rng.IntN(40)))
	if pgtest.Restart(t) {
		t.Logf("PostgreSQL restarted after %d acks", nAcks.Load())
	} else {
		t.Log("FERRY_TEST_POSTGRES_RESTART is not set: the server is not restarted")
	}
	waitAcks(nAcks.Load() + 60)
	close(stop)
	wg.Wait()
	t.Logf("%d acks, %d pushes or pulls failed and went again", len(all), fails.Load())

	// Every device pushes what it has not had acknowledged, then every
	// device pulls to the head: all must then hold the same documents.
	for _, d := range devs {
		for r := range pgRecords {
			rec := fmt.Sprint("rec-", r)
			for try := 0; ; try++ {
				if d.c == nil || try > 0 {
					d.connect(t, rs, app, nil)
				}
				a, err := d.push(rec)
				if err == nil {
					if a.seq != 0 {
						all = append(all, a)
					}
					break
				}
				if try == 5 {
					t.Fatalf("device %d cannot push %s: %v", d.id, rec, err)
				}
			}
		}
	}
	for _, d := range devs {
		if err := d.pull(); err != nil {
			t.Fatalf("device %d: final pull: %v", d.id, err)
		}
		d.c.Close()
	}
	// The relays' /metrics cover the pool and the database's clock.
	resp, err := http.Get(strings.Replace(strings.TrimSuffix(rs.url(0), "/ws"), "ws://", "http://", 1) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{`ferry_postgres_pool_connections{state="acquired"}`, "ferry_postgres_pool_waited_acquires_total", "ferry_postgres_clock_offset_seconds", "ferry_postgres_notifications_received_total"} {
		if !strings.Contains(string(page), m) {
			t.Errorf("relay's /metrics lacks %s", m)
		}
	}
	for _, p := range procs {
		p.stop(t)
	}

	st, err := pgstore.Open(context.Background(), pgtest.DSN(t), &pgstore.Options{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	log, err := st.Log(ctx, coll, 0, 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range log {
		if e.Seq != uint64(i+1) {
			t.Fatalf("log entry %d has seq %d: a gap or a number used twice", i, e.Seq)
		}
	}
	docs := map[string]*crdt.Doc{}
	for r := range pgRecords {
		rec := fmt.Sprint("rec-", r)
		b, heads, err := relay.Document(ctx, st, coll, rec)
		if err != nil {
			t.Fatal(err)
		}
		if docs[rec], err = crdt.Load(b, ""); err != nil {
			t.Fatal(err)
		}
		for _, d := range devs {
			if !d.docs[rec].Heads().Equal(heads) {
				t.Fatalf("device %d's %s is at %v, the store's at %v: not converged", d.id, rec, d.docs[rec].Heads(), heads)
			}
		}
	}
	for _, a := range all {
		if a.seq == 0 || a.seq > uint64(len(log)) {
			t.Fatalf("acked seq %d (record %s) is not in the log of %d", a.seq, a.record, len(log))
		}
		for _, h := range a.heads {
			if !docs[a.record].Has(h) {
				t.Fatalf("acked change %s of %s lost", h, a.record)
			}
		}
	}
	t.Logf("%d acks checked against %d log entries; %d devices converged", len(all), len(log), devices)
}

// --dev keeps the embedded store; with a PostgreSQL store it is refused
// before anything starts.
func TestRelayDevRefusesPostgres(t *testing.T) {
	var out, errb syncBuffer
	code := runMain(context.Background(), []string{"relay", "--dev", "--postgres", "postgres://u:secret-pw@127.0.0.1:1/db", "--data", t.TempDir(), "--addr", "127.0.0.1:0"}, &out, &errb)
	if code != exitUsage {
		t.Fatalf("exit %d, want %d; stderr: %s", code, exitUsage, errb.String())
	}
	if s := errb.String() + out.String(); !strings.Contains(s, "--dev") || strings.Contains(s, "secret-pw") {
		t.Fatalf("message %q: want one naming --dev, without the password", s)
	}
}

// A relay whose database cannot be reached says so, without the password,
// and exits 1.
func TestRelayPostgresUnreachable(t *testing.T) {
	dir := t.TempDir()
	app := relay.NewApp("shop")
	b, _ := json.Marshal(Config{Apps: []AppConfig{{App: app}}, Postgres: "postgres://ferry:secret-pw@127.0.0.1:1/ferry?connect_timeout=2"})
	path := filepath.Join(dir, "relay.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb syncBuffer
	code := runMain(context.Background(), []string{"relay", "--config", path, "--addr", "127.0.0.1:0", "--log-level", "error"}, &out, &errb)
	if code != exitFailed {
		t.Fatalf("exit %d, want %d; stderr: %s", code, exitFailed, errb.String())
	}
	s := errb.String() + out.String()
	if strings.Contains(s, "secret-pw") || !strings.Contains(s, "127.0.0.1") {
		t.Fatalf("message %q: want the database's address, never its password", s)
	}
}

// The PostgreSQL keys of the config file are checked like the others.
func TestConfigPostgresKeys(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{PostgresSchema: "x"}, "postgres_schema"},
		{Config{Postgres: "dbname=f", PostgresMaxConns: -1}, "postgres_max_conns"},
		{Config{Postgres: "dbname=f", PostgresSchema: "bad\nname"}, "postgres_schema"},
	} {
		err := tc.cfg.check()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("check(%+v) = %v, want a problem with %s", tc.cfg, err, tc.want)
		}
	}
	if err := (&Config{Postgres: "dbname=f", PostgresSchema: "ferry_prod", PostgresMaxConns: 20}).check(); err != nil {
		t.Errorf("a good PostgreSQL config refused: %v", err)
	}
}
