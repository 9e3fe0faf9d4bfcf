package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/transport"
)

// faultProxy is a TCP proxy between the replicas and a relay. cut closes
// every connection through it, as a network failure would; connections
// made afterwards reach the current target.
type faultProxy struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	dest  string
	conns map[net.Conn]struct{}
	done  bool
}

func newFaultProxy(t *testing.T, dest string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, dest: dest, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *faultProxy) url() string { return "ws://" + p.ln.Addr().String() + "/ws" }

func (p *faultProxy) retarget(dest string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dest = dest
}

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		dest := p.dest
		p.mu.Unlock()
		up, err := net.Dial("tcp", dest)
		if err != nil {
			down.Close()
			continue
		}
		p.mu.Lock()
		if p.done {
			p.mu.Unlock()
			down.Close()
			up.Close()
			return
		}
		p.conns[down], p.conns[up] = struct{}{}, struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(up, down)
		go p.pipe(down, up)
	}
}

func (p *faultProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// cut closes every open connection and reports how many there were.
func (p *faultProxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns)
	for c := range p.conns {
		c.Close()
	}
	return n
}

func (p *faultProxy) close() {
	p.mu.Lock()
	p.done = true
	p.mu.Unlock()
	p.ln.Close()
	p.cut()
	p.wg.Wait()
}

// faultStore is a relay store that runs a hook once after a successful
// Append: the changes are durable, and the hook can cut the connection
// before the relay sends the ack.
type faultStore struct {
	relay.Store
	mu          sync.Mutex
	afterAppend func()
}

func (s *faultStore) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	seq, err := s.Store.Append(ctx, c, fence, now, entries)
	s.mu.Lock()
	hook := s.afterAppend
	if err == nil {
		s.afterAppend = nil
	}
	s.mu.Unlock()
	if err == nil && hook != nil {
		hook()
	}
	return seq, err
}

func (s *faultStore) onNextAppend(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.afterAppend = fn
}

// progressHook is a Listener that runs a function on sync progress.
type progressHook struct {
	mu sync.Mutex
	fn func(Progress) bool // returns true when done: it is then removed
}

func (h *progressHook) SyncProgress(p Progress) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fn != nil && h.fn(p) {
		h.fn = nil
	}
}
func (h *progressHook) SyncCompleted(*SyncStats)      {}
func (h *progressHook) SyncStopped(*SyncStats)        {}
func (h *progressHook) SyncFailed(*SyncStats, error)  {}
func (h *progressHook) once(fn func(p Progress) bool) { h.mu.Lock(); h.fn = fn; h.mu.Unlock() }
func (h *progressHook) listener() Listener            { return Listener{Progress: h.SyncProgress} }

// faultRelay is a relay over one store, reached through a faultProxy, that
// a test can restart mid-sync.
type faultRelay struct {
	t      *testing.T
	store  *faultStore
	opts   relay.Options
	srv    *relay.Server
	hs     *httptest.Server
	proxy  *faultProxy
	env    *syncEnv // for device and profile; its URL is the proxy's
	tenant string
}

func newFaultRelay(t *testing.T, limits transport.Limits) *faultRelay {
	t.Helper()
	app := relay.NewApp("shop")
	auth, err := relay.NewAuth([]relay.App{app}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := relay.IssueToken(app, relay.TokenRequest{Subject: "tester", TTL: time.Hour, Write: []string{"*"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f := &faultRelay{t: t, store: &faultStore{Store: memstore.New()}, tenant: app.ID}
	f.opts = relay.Options{Store: f.store, Auth: auth, Limits: limits, PingInterval: -1}
	f.start()
	f.proxy = newFaultProxy(t, f.hs.Listener.Addr().String())
	f.env = &syncEnv{t: t, store: f.store, app: app, token: tok, url: f.proxy.url()}
	t.Cleanup(func() {
		f.stop()
		f.store.Close()
	})
	return f
}

func (f *faultRelay) start() {
	f.t.Helper()
	srv, err := relay.NewServer(&f.opts)
	if err != nil {
		f.t.Fatal(err)
	}
	f.srv, f.hs = srv, httptest.NewServer(srv.Handler())
}

func (f *faultRelay) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		f.t.Errorf("relay shutdown: %v", err)
	}
	f.hs.Close()
}

// restart stops the relay, ending every session, and starts a new one on
// the same store; the proxy sends new connections to it.
func (f *faultRelay) restart() {
	f.stop()
	f.start()
	f.proxy.retarget(f.hs.Listener.Addr().String())
}

// log returns the collection's whole relay log.
func (f *faultRelay) log(coll string) []relay.LogEntry {
	f.t.Helper()
	es, err := f.store.Log(context.Background(), relay.Coll{Tenant: f.tenant, Collection: coll}, 0, 1<<20)
	if err != nil {
		f.t.Fatal(err)
	}
	return es
}

// checkLogOnce asserts that no change is stored twice in the collection's
// relay log, and returns how many entries each record has.
func (f *faultRelay) checkLogOnce(coll string) map[string]int {
	f.t.Helper()
	seen := map[crdt.Hash]uint64{}
	per := map[string]int{}
	for _, e := range f.log(coll) {
		per[e.Record]++
		infos, err := crdt.ParseChanges(e.Changes)
		if err != nil {
			f.t.Fatalf("log entry %d: %v", e.Seq, err)
		}
		for _, in := range infos {
			if s, dup := seen[in.Hash]; dup {
				f.t.Fatalf("change %v of %s is in the relay log twice: entries %d and %d", in.Hash, e.Record, s, e.Seq)
			}
			seen[in.Hash] = e.Seq
		}
	}
	return per
}

// wantSame asserts that b holds exactly a's records (same heads, fields
// and deletion status) and the relay's heads, and neither has anything
// pending.
func (f *faultRelay) wantSame(coll string, a, b *Replica) {
	f.t.Helper()
	scan := func(r *Replica) map[string]Record {
		c := coll2(f.t, r, coll)
		if n, err := c.PendingCount(); err != nil || n != 0 {
			ids, _ := c.Pending()
			f.t.Fatalf("%s: %d pending %v (%v)", r.ID()[:6], n, ids, err)
		}
		recs, err := collect(c.Scan(ScanOptions{Deleted: true}))
		if err != nil {
			f.t.Fatal(err)
		}
		out := map[string]Record{}
		for _, r := range recs {
			out[r.ID] = r
		}
		return out
	}
	ra, rb := scan(a), scan(b)
	if len(ra) != len(rb) {
		f.t.Fatalf("%d records on a, %d on b", len(ra), len(rb))
	}
	for id, x := range ra {
		y, ok := rb[id]
		if !ok || !x.Heads.Equal(y.Heads) || x.Deleted != y.Deleted || !crdt.Equal(x.Fields, y.Fields) {
			f.t.Fatalf("%s/%s: a has %+v, b has %+v (found %v)", coll, id, x, y, ok)
		}
		_, heads, err := relay.Document(context.Background(), f.store, relay.Coll{Tenant: f.tenant, Collection: coll}, id)
		if err != nil || !heads.Equal(x.Heads) {
			f.t.Fatalf("%s/%s: relay heads %v (%v), replicas %v", coll, id, heads, err, x.Heads)
		}
	}
}

// mustFailSync syncs through a fault and wants it reported as a failed
// sync, in the result and in LastSync.
func mustFailSync(t *testing.T, r *Replica) *SyncStats {
	t.Helper()
	st, err := r.Sync(context.Background(), "p")
	if err == nil {
		t.Fatalf("sync of %s succeeded through a cut connection: %+v", r.ID()[:6], st)
	}
	if !errors.Is(err, ErrSyncFailed) || st.Status != StatusFailed {
		t.Fatalf("sync through a cut connection: %v, status %s; want ErrSyncFailed and %s", err, st.Status, StatusFailed)
	}
	if last, lerr := r.LastSync("p"); lerr != nil || last.Status != StatusFailed {
		t.Fatalf("LastSync after the cut: %+v, %v", last, lerr)
	}
	t.Logf("cut sync failed as it should: %v", err)
	return st
}

func liveCount(t *testing.T, r *Replica, coll string) int {
	t.Helper()
	recs, err := collect(coll2(t, r, coll).Scan(ScanOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	return len(recs)
}

// TestSyncCutOffAndResumed cuts syncs off midway, in both directions, and
// checks the next sync loses nothing and stores nothing twice. The relay
// pages pulls and pushes by 3 records, so 10 records take several round
// trips; the cuts come from the sync's own progress callback (between
// pages) or from the relay's store (after a push is durable, before its
// ack is sent), not from timing.
func TestSyncCutOffAndResumed(t *testing.T) {
	const n = 10
	limits := transport.Limits{MaxBatch: 3}
	fill := func(t *testing.T, r *Replica) {
		t.Helper()
		c := coll2(t, r, "c")
		for i := range n {
			if err := c.Create(fmt.Sprintf("r%02d", i), map[string]any{"n": int64(i), "name": fmt.Sprintf("item %d", i)}); err != nil {
				t.Fatal(err)
			}
		}
	}

	t.Run("pull", func(t *testing.T) {
		f := newFaultRelay(t, limits)
		hook := &progressHook{}
		a, b := f.env.device(nil), f.env.device(&Options{Listener: hook.listener()})
		fill(t, a)
		mustSync(t, a, "p")

		// A fresh pull (snapshot pages), cut after its first page.
		hook.once(func(p Progress) bool {
			if p.Direction != FromRelay || p.Done != limits.MaxBatch {
				return false
			}
			if k := f.proxy.cut(); k == 0 {
				t.Errorf("no connection to cut")
			}
			return true
		})
		mustFailSync(t, b)
		// The second page may have arrived before the cut: the pull asks
		// for it before it stores the first (see pageAhead).
		if got := liveCount(t, b, "c"); got != limits.MaxBatch && got != 2*limits.MaxBatch {
			t.Fatalf("b applied %d records before the cut, want the first page's %d, or the second's too", got, limits.MaxBatch)
		}
		mustSync(t, b, "p")
		f.wantSame("c", a, b)

		// A pull from the cursor, cut by a relay restart after its first
		// page; the new relay serves the same store.
		ca := coll2(t, a, "c")
		for i := range n {
			id := fmt.Sprintf("r%02d", i)
			if err := ca.Update(id, func(d *crdt.Doc) error { return d.Increment(crdt.Path{"hits"}, int64(i)) }); err != nil {
				t.Fatal(err)
			}
		}
		if err := ca.Delete("r03"); err != nil {
			t.Fatal(err)
		}
		if err := ca.Create("r99", map[string]any{"n": int64(99)}); err != nil {
			t.Fatal(err)
		}
		before := len(f.log("c"))
		mustSync(t, a, "p")
		hook.once(func(p Progress) bool {
			if p.Direction != FromRelay || p.Done != limits.MaxBatch {
				return false
			}
			f.restart()
			return true
		})
		mustFailSync(t, b)
		mustSync(t, b, "p")
		f.wantSame("c", a, b)
		if got := len(f.log("c")); got != before+n+1 {
			t.Fatalf("relay log grew from %d to %d entries, want %d: b's resumed pull pushed something", before, got, before+n+1)
		}
		f.checkLogOnce("c")
		if f := getFields(t, b, "c", "r07"); f["hits"] != int64(7) || f["n"] != int64(7) {
			t.Fatalf("b has r07 = %v", f)
		}
	})

	t.Run("push-acked", func(t *testing.T) {
		// The first batch is acked, then the connection dies before the
		// next one is sent: one push in flight at a time makes that
		// point exist.
		was := syncPushWindow
		syncPushWindow = 1
		defer func() { syncPushWindow = was }()
		f := newFaultRelay(t, limits)
		hook := &progressHook{}
		a, b := f.env.device(&Options{Listener: hook.listener()}), f.env.device(nil)
		fill(t, a)
		hook.once(func(p Progress) bool {
			if p.Direction != ToRelay || p.Done != limits.MaxBatch {
				return false
			}
			f.proxy.cut()
			return true
		})
		st := mustFailSync(t, a)
		if c := stat(st, "c"); c.ToRelay.Added != limits.MaxBatch {
			t.Fatalf("stats of the cut sync: %+v, want %d added to the relay", c, limits.MaxBatch)
		}
		if k, _ := coll2(t, a, "c").PendingCount(); k != n-limits.MaxBatch {
			t.Fatalf("%d pending after the first batch's ack, want %d", k, n-limits.MaxBatch)
		}
		if got := len(f.log("c")); got != limits.MaxBatch {
			t.Fatalf("relay log has %d entries, want the first batch's %d", got, limits.MaxBatch)
		}
		st = mustSync(t, a, "p")
		if c := stat(st, "c"); c.ToRelay.Added != n-limits.MaxBatch {
			t.Fatalf("resumed sync: %+v, want the other %d added", c, n-limits.MaxBatch)
		}
		mustSync(t, b, "p")
		f.wantSame("c", a, b)
		for id, k := range f.checkLogOnce("c") {
			if k != 1 {
				t.Fatalf("%s has %d relay log entries, want 1", id, k)
			}
		}
	})

	t.Run("push-ack-lost", func(t *testing.T) {
		// The relay stores the first batch, then the connection dies
		// before its ack reaches the device: the device pushes those
		// records again, and the relay must not store them twice.
		f := newFaultRelay(t, limits)
		a, b := f.env.device(nil), f.env.device(nil)
		fill(t, a)
		f.store.onNextAppend(func() { f.proxy.cut() })
		mustFailSync(t, a)
		if k, _ := coll2(t, a, "c").PendingCount(); k != n {
			t.Fatalf("%d pending, want all %d: no ack arrived", k, n)
		}
		// The relay stores the pushes it read before the cut: the first
		// batch, and the ones pipelined behind it.
		if got := len(f.log("c")); got < limits.MaxBatch || got > n {
			t.Fatalf("relay log has %d entries, want the stored batch's %d, up to all %d", got, limits.MaxBatch, n)
		}
		// A record of the unacknowledged batch changes again meanwhile:
		// only the new change may be stored.
		if err := coll2(t, a, "c").Update("r00", func(d *crdt.Doc) error { return d.Set(crdt.Path{"name"}, "renamed") }); err != nil {
			t.Fatal(err)
		}
		mustSync(t, a, "p")
		mustSync(t, b, "p")
		f.wantSame("c", a, b)
		per := f.checkLogOnce("c")
		for i := range n {
			id, want := fmt.Sprintf("r%02d", i), 1
			if id == "r00" {
				want = 2
			}
			if per[id] != want {
				t.Fatalf("%s has %d relay log entries, want %d (log: %v)", id, per[id], want, per)
			}
		}
		if f := getFields(t, b, "c", "r00"); f["name"] != "renamed" {
			t.Fatalf("b has r00 = %v", f)
		}

		// Again with a cursor: the resumed sync pulls the device's own
		// unacknowledged changes from the log rather than as snapshots.
		ca := coll2(t, a, "c")
		for i := range n {
			if err := ca.Update(fmt.Sprintf("r%02d", i), func(d *crdt.Doc) error { return d.Increment(crdt.Path{"hits"}, 1) }); err != nil {
				t.Fatal(err)
			}
		}
		f.store.onNextAppend(func() { f.proxy.cut() })
		mustFailSync(t, a)
		mustSync(t, a, "p")
		mustSync(t, b, "p")
		f.wantSame("c", a, b)
		per = f.checkLogOnce("c")
		for i := range n {
			id, want := fmt.Sprintf("r%02d", i), 2
			if id == "r00" {
				want = 3
			}
			if per[id] != want {
				t.Fatalf("after the second cut, %s has %d relay log entries, want %d (log: %v)", id, per[id], want, per)
			}
		}
	})
}

// liveRelay is a relay over a Badger store in a folder, on a fixed
// address, that can be stopped and started again on both.
type liveRelay struct {
	t     *testing.T
	dir   string
	addr  string
	opts  relay.Options
	store *badgerstore.Store
	srv   *relay.Server
	hs    *httptest.Server
}

func (l *liveRelay) start() {
	l.t.Helper()
	st, err := badgerstore.Open(l.dir, nil)
	if err != nil {
		l.t.Fatal(err)
	}
	o := l.opts
	o.Store = st
	srv, err := relay.NewServer(&o)
	if err != nil {
		l.t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	if l.addr != "" {
		// The same address as before, so the devices' profiles still
		// point at it.
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			l.t.Fatalf("listen again on %s: %v", l.addr, err)
		}
		hs.Listener.Close()
		hs.Listener = ln
	}
	hs.Start()
	l.addr = hs.Listener.Addr().String()
	l.store, l.srv, l.hs = st, srv, hs
}

func (l *liveRelay) stop() {
	if l.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.srv.Shutdown(ctx); err != nil {
		l.t.Errorf("relay shutdown: %v", err)
	}
	l.hs.Close()
	if err := l.store.Close(); err != nil {
		l.t.Errorf("relay store close: %v", err)
	}
	l.srv = nil
}

// awaitFeed reads f until cond holds, checking it after each remote event.
func awaitFeed(t *testing.T, f *Feed, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for !cond() {
		select {
		case ev, ok := <-f.C:
			if !ok {
				t.Fatalf("waiting for %s: feed closed: %v", what, f.Err())
			}
			_ = ev
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// awaitRemote waits for a remote event on record id after which cond holds.
func awaitRemote(t *testing.T, f *Feed, id, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		select {
		case ev, ok := <-f.C:
			if !ok {
				t.Fatalf("waiting for %s: feed closed: %v", what, f.Err())
			}
			if ev.Origin == Remote && ev.ID == id && cond() {
				return
			}
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func closeOrFail(t *testing.T, r *Replica, d time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- r.Close() }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("close: %v", err)
		}
	case <-timer.C:
		t.Fatalf("replica %s: Close did not return within %s", r.ID()[:6], d)
	}
}

// TestLiveModeSurvivesRelayRestart runs two live devices through a relay
// that stops and comes back on the same folder and address: an edit made
// while it was down reaches the other device once both reconnect.
func TestLiveModeSurvivesRelayRestart(t *testing.T) {
	app := relay.NewApp("shop")
	auth, err := relay.NewAuth([]relay.App{app}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := relay.IssueToken(app, relay.TokenRequest{Subject: "tester", TTL: time.Hour, Write: []string{"*"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	l := &liveRelay{t: t, dir: t.TempDir(), opts: relay.Options{Auth: auth, PingInterval: -1}}
	l.start()
	t.Cleanup(l.stop)

	opts := &Options{InMemory: true, BackoffMin: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond, TokenSource: StaticToken(tok)}
	a, b := open(t, "", opts), open(t, "", opts)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	fa, fb := ca.Watch(1024), cb.Watch(1024)
	defer fa.Close()
	defer fb.Close()
	for _, r := range []*Replica{a, b} {
		err := r.AddProfile(Profile{Name: "live", URL: "ws://" + l.addr + "/ws", APIKey: app.APIKey,
			Mode: policy.Live, Type: policy.TwoWay, Collections: []string{"c"}, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
	}
	field := func(r *Replica, id, key string) any {
		var m map[string]any
		if err := coll2(t, r, "c").Get(id, &m); err != nil {
			return nil
		}
		return m[key]
	}

	if err := ca.Create("x", map[string]any{"v": int64(1)}); err != nil {
		t.Fatal(err)
	}
	awaitRemote(t, fb, "x", "x=1 on b", func() bool { return field(b, "x", "v") == int64(1) })

	l.stop()
	// Edits on both sides while the relay is down.
	if err := ca.Put("x", map[string]any{"v": int64(2)}); err != nil {
		t.Fatal(err)
	}
	if err := ca.Create("y", map[string]any{"v": int64(1)}); err != nil {
		t.Fatal(err)
	}
	if err := cb.Create("z", map[string]any{"v": int64(1)}); err != nil {
		t.Fatal(err)
	}
	l.start()

	awaitRemote(t, fb, "y", "y on b", func() bool { return field(b, "y", "v") == int64(1) })
	awaitFeed(t, fb, "x=2 on b", func() bool { return field(b, "x", "v") == int64(2) })
	awaitRemote(t, fa, "z", "z on a", func() bool { return field(a, "z", "v") == int64(1) })

	// And an edit after the reconnection travels live.
	if err := cb.Put("x", map[string]any{"v": int64(3)}); err != nil {
		t.Fatal(err)
	}
	awaitRemote(t, fa, "x", "x=3 on a", func() bool { return field(a, "x", "v") == int64(3) })

	for _, r := range []*Replica{a, b} {
		closeOrFail(t, r, 10*time.Second)
	}
	if err := fa.Err(); !errors.Is(err, ErrClosed) && err != nil {
		t.Fatalf("a's feed ended with %v", err)
	}
}
