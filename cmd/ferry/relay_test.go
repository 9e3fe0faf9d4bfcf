package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/transport"
)

// acked is one change the relay acknowledged.
type acked struct {
	record string
	heads  crdt.Heads
	seq    uint64
}

// TestRelaySurvivesSIGKILL kills the relay process in the middle of pushes
// from many clients, restarts it on the same folder, and checks that every
// acknowledged change is there and no sequence number was reused.
func TestRelaySurvivesSIGKILL(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FERRY_KILL_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (set FERRY_KILL_SEED to reproduce)", seed)
	rng := rand.New(rand.NewPCG(seed, seed))

	dir := t.TempDir()
	// Compaction and log truncation run all the time, so kills land in
	// them too: a record's tail folded into a snapshot, the log cut
	// below what the snapshots hold.
	cfg, app := testConfigWith(t, dir, func(c *Config) {
		c.CompactInterval = Duration(5 * time.Millisecond)
		c.LogRetention = 20
	})
	data := filepath.Join(dir, "data")
	const clients, rounds = 8, 4

	// Each client owns three records and keeps its documents across
	// rounds, pushing everything since the heads last acknowledged.
	type device struct {
		docs  map[string]*crdt.Doc
		acked map[string]crdt.Heads
	}
	devs := make([]*device, clients)
	for i := range devs {
		devs[i] = &device{docs: map[string]*crdt.Doc{}, acked: map[string]crdt.Heads{}}
		for j := 0; j < 3; j++ {
			d, _ := crdt.New(fmt.Sprintf("%02x%02x", i+1, j+1))
			devs[i].docs[fmt.Sprintf("c%d-r%d", i, j)] = d
		}
	}
	var mu sync.Mutex
	var all []acked

	for round := 0; round < rounds; round++ {
		p := startRelay(t, "--config", cfg, "--data", data, "--addr", "127.0.0.1:0")
		killAfter := 20 + rng.IntN(150)
		acks := make(chan acked, 1024)
		var wg sync.WaitGroup
		for i := 0; i < clients; i++ {
			wg.Add(1)
			crng := rand.New(rand.NewPCG(seed, uint64(round*100+i)))
			go func() {
				defer wg.Done()
				c, err := dialRelay(t, p.url, app, fmt.Sprint("dev-", i))
				if err != nil {
					return
				}
				defer c.Close()
				dv := devs[i]
				for n := 0; ; n++ {
					id := fmt.Sprintf("c%d-r%d", i, crng.IntN(3))
					d := dv.docs[id]
					// Values large enough that tails soon outgrow snapshots.
					d.Set(crdt.Path{fmt.Sprint("f", crng.IntN(5))}, fmt.Sprintf("%d %0600d", n, crng.Uint64()))
					d.Commit("", time.Time{})
					data, err := d.ChangesSince(dv.acked[id])
					if err != nil {
						t.Error(err)
						return
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					var ack transport.Ack
					err = c.Call(ctx, &transport.Push{Collection: "c", Records: []transport.RecordChanges{{Record: id, Data: data}}}, &ack)
					cancel()
					if err != nil {
						return // the relay died: this push is unacknowledged
					}
					h, _ := crdt.HeadsFromSlices(ack.Records[0].Heads)
					dv.acked[id] = h
					acks <- acked{record: id, heads: h, seq: ack.Seq}
				}
			}()
		}
		for n := 0; n < killAfter; n++ {
			a := <-acks
			mu.Lock()
			all = append(all, a)
			mu.Unlock()
		}
		p.kill(t)
		go func() { wg.Wait(); close(acks) }()
		for a := range acks { // acks that raced the kill still count
			mu.Lock()
			all = append(all, a)
			mu.Unlock()
		}
		t.Logf("round %d: killed after %d acks (%d in all)", round, killAfter, len(all))
	}

	// A last, graceful restart must also keep everything.
	p := startRelay(t, "--config", cfg, "--data", data, "--addr", "127.0.0.1:0")
	p.stop(t)

	store, err := badgerstore.Open(storeDir(data), nil)
	if err != nil {
		t.Fatalf("store does not reopen cleanly: %v", err)
	}
	defer store.Close()
	ctx := context.Background()
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	// The log from its horizon on: truncation drops what snapshots hold,
	// never renumbers.
	var horizon uint64
	log, err := store.Log(ctx, coll, 0, 1_000_000)
	var te *relay.TruncatedError
	if errors.As(err, &te) {
		horizon = te.Horizon
		log, err = store.Log(ctx, coll, horizon, 1_000_000)
	}
	if err != nil {
		t.Fatal(err)
	}
	bySeq := map[uint64]string{}
	for i, e := range log {
		if e.Seq != horizon+uint64(i+1) {
			t.Fatalf("log entry %d has seq %d: a gap or a reused number", i, e.Seq)
		}
		bySeq[e.Seq] = e.Record
	}
	if cands, err := store.CompactionCandidates(ctx, 1000); err == nil {
		t.Logf("horizon %d, %d records still to compact", horizon, len(cands))
	}
	docs := map[string]*crdt.Doc{}
	for _, a := range all {
		if a.seq > horizon && bySeq[a.seq] == "" {
			t.Fatalf("acked seq %d (record %s) is not in the log", a.seq, a.record)
		}
		d := docs[a.record]
		if d == nil {
			b, _, err := relay.Document(ctx, store, coll, a.record)
			if err != nil {
				t.Fatalf("acked record %s missing: %v", a.record, err)
			}
			if d, err = crdt.Load(b, ""); err != nil {
				t.Fatal(err)
			}
			docs[a.record] = d
		}
		for _, h := range a.heads {
			if !d.Has(h) {
				t.Fatalf("acked change %s of %s lost", h, a.record)
			}
		}
	}
	t.Logf("%d acks checked against %d log entries", len(all), len(log))
}

func TestRelayNeedsApps(t *testing.T) {
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"relay", "--data", t.TempDir(), "--addr", "127.0.0.1:0"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "no apps configured") {
		t.Fatalf("relay without apps: %v", err)
	}
}

// inProcessRelay is `ferry relay` run in this process.
type inProcessRelay struct {
	url, apiKey, token string
	out                *syncBuffer
	cancel             context.CancelFunc
	done               chan error
}

// startInProcess runs a ferry command line that starts a relay and waits
// for its URL, and with --dev for its API key and token.
func startInProcess(t *testing.T, args ...string) *inProcessRelay {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &inProcessRelay{out: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run(ctx, args, r.out, r.out) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	dev := slices.Contains(args, "--dev")
	for r.url == "" || dev && r.token == "" {
		changed := r.out.changed()
		for _, line := range strings.Split(r.out.String(), "\n") {
			switch {
			case strings.HasPrefix(line, "ferry relay listening on "):
				r.url = strings.TrimPrefix(line, "ferry relay listening on ")
			case strings.HasPrefix(line, "  API key: "):
				r.apiKey = strings.TrimPrefix(line, "  API key: ")
			case strings.HasPrefix(line, "  token:   "):
				r.token = strings.TrimPrefix(line, "  token:   ")
			}
		}
		if r.url != "" && (!dev || r.token != "") {
			break
		}
		select {
		case err := <-r.done:
			r.done <- err
			t.Fatalf("relay exited: %v\n%s", err, r.out.String())
		case <-changed:
		}
	}
	return r
}

// stop ends the relay as SIGTERM would and checks it stopped cleanly.
func (r *inProcessRelay) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	err := <-r.done
	r.done <- err
	if err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
}

// TestRelayBannerSaysMemoryBudget: the start banner names the memory
// budget, as --max-memory set it, the document cache's part of it, and
// Go's memory limit.
func TestRelayBannerSaysMemoryBudget(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	r := startInProcess(t, "relay", "--dev", "--data", t.TempDir(), "--addr", "127.0.0.1:0", "--log-level", "error", "--max-memory", "96MiB")
	if want := "memory budget 96.0 MiB (max_memory), documents cached within 24.0 MiB of it, Go's memory limit 48.0 MiB\n"; !strings.Contains(r.out.String(), want) {
		t.Errorf("banner lacks %q:\n%s", want, r.out.String())
	}
	r.stop(t)
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "268435456": 256 << 20, "512MiB": 512 << 20, "2GiB": 2 << 30, "64 KiB": 64 << 10} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "-1", "1.5GiB", "9999999999GiB", "2GB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

func TestRelayDevModeServesAndStops(t *testing.T) {
	dir := t.TempDir()
	r := startInProcess(t, "relay", "--dev", "--data", dir, "--addr", "127.0.0.1:0", "--log-level", "error")
	url, key, tok := r.url, r.apiKey, r.token
	// The printed key and token work as printed.
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	conn, err := transport.Dial(dctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewClient(conn, nil)
	if err := c.Call(dctx, &transport.Hello{APIKey: key, Token: tok, ReplicaID: "r", Versions: transport.SupportedVersions()}, &transport.Welcome{}); err != nil {
		t.Fatalf("printed credentials refused: %v", err)
	}
	c.Close()
	r.stop(t)
	// The dev app persists: a token minted now is for the same app.
	var tb bytes.Buffer
	if err := run(context.Background(), []string{"token", "--dev", "--data", dir, "--subject", "ann", "--read", "notes"}, &tb, &tb); err != nil {
		t.Fatal(err)
	}
	app, _ := devApp(dir)
	a, _ := relay.NewAuth([]relay.App{app}, nil)
	_, claims, err := a.Verify(key, strings.TrimSpace(tb.String()))
	if err != nil || claims.Subject != "ann" || !claims.CanRead("notes") || claims.CanWrite("notes") {
		t.Fatalf("token command: %v %+v", err, claims)
	}
}

func TestBackupAndRestore(t *testing.T) {
	dir := t.TempDir()
	data, restored := filepath.Join(dir, "data"), filepath.Join(dir, "restored")
	store, err := badgerstore.Open(storeDir(data), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := crdt.New("ab")
	d.Put(map[string]any{"v": 1})
	d.Commit("", time.Time{})
	ch, _ := d.ChangesSince(nil)
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	if _, err := store.Append(context.Background(), coll, 0, time.Now(), []relay.Entry{{Record: "r", Changes: ch, Heads: d.Heads()}}); err != nil {
		t.Fatal(err)
	}
	inc := store.Incarnation()
	store.Close()

	file := filepath.Join(dir, "backup.bin")
	var out bytes.Buffer
	if err := run(context.Background(), []string{"backup", "--data", data, "--out", file}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"restore", "--data", restored, "--in", file}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"restore", "--data", restored, "--in", file}, &out, &out); err == nil {
		t.Fatal("restore over existing data succeeded")
	}
	r, err := badgerstore.Open(storeDir(restored), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Incarnation() == inc {
		t.Fatal("restored store kept the incarnation: devices could not tell")
	}
	if h, _ := r.Head(context.Background(), coll); h != 1 {
		t.Fatalf("restored head %d", h)
	}
}

func TestUnknownCommand(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"frobnicate"}, &out, &out); err == nil {
		t.Fatal("unknown command accepted")
	}
	if err := run(context.Background(), []string{"relay", "--nope"}, &out, &out); err == nil {
		t.Fatal("unknown flag accepted")
	}
}

// syncBuffer is a buffer written by one goroutine and read by another,
// which can wait for the next write.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	ch  chan struct{}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

var _ = errors.Is

// TestRelayWritesCPUProfile: FERRY_RELAY_CPUPROFILE makes the relay write
// a CPU profile of its run, and FERRY_RELAY_MEMPROFILE an allocation
// profile, named with its process ID, once it stops.
func TestRelayWritesCPUProfile(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(relayProfileEnv, filepath.Join(dir, "relay-%p.prof"))
	t.Setenv(relayAllocProfileEnv, filepath.Join(dir, "allocs-%p.prof"))
	r := startInProcess(t, "relay", "--dev", "--data", filepath.Join(dir, "data"), "--addr", "127.0.0.1:0", "--log-level", "error")
	r.stop(t)
	for _, name := range []string{"relay-%d.prof", "allocs-%d.prof"} {
		f, err := os.Open(filepath.Join(dir, fmt.Sprintf(name, os.Getpid())))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		// A profile is a gzipped protocol buffer.
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b, err := io.ReadAll(zr); err != nil || len(b) == 0 {
			t.Fatalf("%s: %d bytes, %v", name, len(b), err)
		}
	}
}
