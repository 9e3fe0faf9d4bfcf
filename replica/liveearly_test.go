package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/pb"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
)

// FERRY_TEST_EARLY_APPLY=1 runs the package's tests with every live
// session taking the relay's early messages (earlyApply), not only the
// tests that turn them on.
func init() {
	if os.Getenv("FERRY_TEST_EARLY_APPLY") == "1" {
		earlyApply = true
	}
}

// useEarlyApply turns early messages on for the test.
func useEarlyApply(t *testing.T) {
	was := earlyApply
	earlyApply = true
	t.Cleanup(func() { earlyApply = was })
}

// fsyncGate holds a disk replica's fsyncs while closed: each waits until
// it is opened, then fsyncs, or fails with the error it was opened with.
type fsyncGate struct {
	mu   sync.Mutex
	wait chan struct{} // nil: fsyncs run
	err  error
	held chan struct{} // receives when an fsync starts waiting
	// opened: wait is closed, and later fsyncs fail with err
	opened bool
}

// gateFsync installs a gate on r's fsyncs. Call it before r starts any
// goroutine that commits (before adding a live profile).
func gateFsync(t *testing.T, r *Replica) *fsyncGate {
	g := &fsyncGate{held: make(chan struct{}, 16)}
	// Before r's Close, which waits for the calls the gate holds.
	t.Cleanup(func() { g.open(errors.New("test over")) })
	run := r.fsync.Run
	r.fsync.Run = func() error {
		g.mu.Lock()
		wait := g.wait
		g.mu.Unlock()
		if wait != nil {
			select {
			case g.held <- struct{}{}:
			default:
			}
			<-wait
			g.mu.Lock()
			err := g.err
			g.mu.Unlock()
			if err != nil {
				return err
			}
		}
		return run()
	}
	return g
}

func (g *fsyncGate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.wait, g.err, g.opened = make(chan struct{}), nil, false
}

// open lets the fsyncs held, and later ones, go on: fsynced, or failed
// with err.
func (g *fsyncGate) open(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.wait != nil && !g.opened {
		close(g.wait)
	}
	g.err, g.opened = err, true
	if err == nil {
		g.wait = nil
	}
}

// waitValue waits until f reports record id with field at want, and
// returns the event.
func waitValue(t *testing.T, r *Replica, f *Feed, id, field string, want any) Event {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-f.C:
			if !ok {
				t.Fatalf("feed closed: %v", f.Err())
			}
			if ev.ID == id && fmt.Sprint(getFields(t, r, "c", id)[field]) == fmt.Sprint(want) {
				return ev
			}
		case <-deadline:
			t.Fatalf("%s never had %s = %v", id, field, want)
		}
	}
}

// liveOptions are a device's options with a listener that tells when its
// profile "live" is live.
func liveOptions(e *syncEnv) (*Options, <-chan struct{}) {
	live := make(chan struct{}, 64)
	return &Options{TokenSource: StaticToken(e.token), Listener: Listener{Status: func(st SyncStatus) {
		if st.Profile == "live" && st.State == StateLive {
			select {
			case live <- struct{}{}:
			default:
			}
		}
	}}}, live
}

// liveProfile adds the live profile "live" to r, and waits until it is
// live if isLive is not nil.
func liveProfile(t *testing.T, e *syncEnv, r *Replica, isLive <-chan struct{}) {
	t.Helper()
	live := e.profile("live")
	live.Mode = policy.Live
	if err := r.AddProfile(live); err != nil {
		t.Fatal(err)
	}
	if isLive == nil {
		return
	}
	select {
	case <-isLive:
	case <-time.After(20 * time.Second):
		t.Fatal("the live profile did not go live")
	}
}

// A live device pushes an edit while the edit's fsync runs: another device
// has it before the call that made it returns, and that call still waits
// for the fsync. Without early pushes, b would wait for a's fsync.
func TestLiveEarlyPush(t *testing.T) {
	e := newSyncEnv(t)
	optsA, isLive := liveOptions(e)
	a := open(t, t.TempDir(), optsA)
	gate := gateFsync(t, a)
	b := e.device(nil)
	feedB := b.Collection("c").Watch(1024)
	defer feedB.Close()
	liveProfile(t, e, a, isLive)
	liveProfile(t, e, b, nil)
	ca := a.Collection("c")
	if err := ca.Create("r", map[string]any{"qty": int64(0)}); err != nil {
		t.Fatal(err)
	}
	waitValue(t, b, feedB, "r", "qty", 0)

	gate.close()
	done := make(chan error, 1)
	go func() {
		done <- ca.Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, int64(1)) })
	}()
	<-gate.held
	waitValue(t, b, feedB, "r", "qty", 1)
	select {
	case err := <-done:
		t.Fatalf("Update returned (%v) before its fsync", err)
	default:
	}
	gate.open(nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The relay's acknowledgement is recorded once the edit is durable:
	// the next edit goes through, and the first is no longer pending.
	if err := ca.Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, int64(2)) }); err != nil {
		t.Fatal(err)
	}
	waitValue(t, b, feedB, "r", "qty", 2)
	ha, err := ca.Heads("r")
	if err != nil {
		t.Fatal(err)
	}
	hb, err := b.Collection("c").Heads("r")
	if err != nil {
		t.Fatal(err)
	}
	if !ha.Equal(hb) {
		t.Fatalf("a's heads %v, b's %v", ha, hb)
	}
}

// A device that pushed an edit early and then lost it in a power cut
// before its fsync (its call never returned) gets it back from the relay,
// and what it writes afterwards, even before it syncs, does not clash with
// the lost edit: each open writes as a new actor.
//
// The power cut: the device's store is copied while closed, then opened
// again and never fsynced after (its fsyncs are held, then failed), so the
// copy is its durable state when the cut comes, but for the live profile
// the reopened device added, which the copy lacks and the test does not
// need.
func TestLiveEarlyPushLostByPowerCut(t *testing.T) {
	e := newSyncEnv(t)
	dir, saved := t.TempDir(), t.TempDir()
	opts, isLive := liveOptions(e)
	a, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.AddProfile(e.profile("p")); err != nil {
		t.Fatal(err)
	}
	ca := a.Collection("c")
	if err := ca.Create("r", map[string]any{"qty": int64(0), "note": "a"}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a, "p") // the relay has r; a's cursor is past it
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	copyDir(t, dir, saved)

	a = open(t, dir, opts)
	gate := gateFsync(t, a)
	b := e.device(nil)
	feedB := b.Collection("c").Watch(1024)
	defer feedB.Close()
	liveProfile(t, e, a, isLive)
	liveProfile(t, e, b, nil)
	waitValue(t, b, feedB, "r", "qty", 0)

	gate.close()
	done := make(chan error, 1)
	go func() {
		done <- a.Collection("c").Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, int64(1)) })
	}()
	<-gate.held
	waitValue(t, b, feedB, "r", "qty", 1) // the relay holds it
	cut := errors.New("power cut")
	gate.open(cut)
	if err := <-done; !errors.Is(err, cut) {
		t.Fatalf("Update = %v, want the failed fsync", err)
	}
	a.Close()

	// The device as its disk had it: before the edit.
	a2 := open(t, saved, opts)
	c2 := a2.Collection("c")
	if f := getFields(t, a2, "c", "r"); fmt.Sprint(f["qty"]) != "0" {
		t.Fatalf("the copy has qty %v: not the state before the edit", f["qty"])
	}
	if err := c2.Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"note"}, "again") }); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a2, "p")
	waitValue(t, b, feedB, "r", "note", "again")
	fa, fb := getFields(t, a2, "c", "r"), getFields(t, b, "c", "r")
	if fmt.Sprintf("%v %v %v", fa["qty"], fa["note"], fb["qty"]) != "1 again 1" {
		t.Fatalf("after the sync, the device has %v and the other %v; want both edits", fa, fb)
	}
	ha, err := c2.Heads("r")
	if err != nil {
		t.Fatal(err)
	}
	hb, err := b.Collection("c").Heads("r")
	if err != nil {
		t.Fatal(err)
	}
	if !ha.Equal(hb) {
		t.Fatalf("heads differ: %v and %v", ha, hb)
	}
}

// An early push's acknowledgement is recorded only over the relay's heads
// it built on, or over the record's previous early push's: one arriving
// after the heads moved on is left out, and reported, never set back.
func TestAcknowledgeEarlyNeverSetsHeadsBack(t *testing.T) {
	r := mem(t)
	c := r.Collection("c")
	heads := func() crdt.Heads {
		h, err := c.Heads("x")
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	acked := func() crdt.Heads {
		var h crdt.Heads
		if err := r.view(func(txn *badger.Txn) (err error) { h, err = readAcked(txn, "c", "x"); return }); err != nil {
			t.Fatal(err)
		}
		return h
	}
	if err := c.Create("x", map[string]any{"n": 1}); err != nil {
		t.Fatal(err)
	}
	h1 := heads()
	if err := c.Update("x", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, 2) }); err != nil {
		t.Fatal(err)
	}
	h2 := heads()

	// The push of h2, built on nothing held, is acknowledged first.
	if skipped, err := r.acknowledgeEarly("c", []outgoing{{id: "x", heads: h2, early: true}}, false); err != nil || len(skipped) > 0 {
		t.Fatalf("acknowledging h2: skipped %v, %v", skipped, err)
	}
	if !acked().Equal(h2) {
		t.Fatalf("relay's heads %v, want h2", acked())
	}
	// The push of h1, also built on nothing, comes after: left out.
	skipped, err := r.acknowledgeEarly("c", []outgoing{{id: "x", heads: h1, early: true}}, false)
	if err != nil || len(skipped) != 1 {
		t.Fatalf("acknowledging h1 after h2: skipped %v, %v; want x skipped", skipped, err)
	}
	if !acked().Equal(h2) {
		t.Fatalf("relay's heads set back to %v", acked())
	}
	if n, _ := c.PendingCount(); n != 0 {
		t.Fatalf("%d pending, want 0", n)
	}
	// A later edit's push, built on h1 but after the early push of h2:
	// recorded.
	if err := c.Update("x", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, 3) }); err != nil {
		t.Fatal(err)
	}
	h3 := heads()
	if skipped, err := r.acknowledgeEarly("c", []outgoing{{id: "x", heads: h3, base: h1, prev: h2, early: true}}, false); err != nil || len(skipped) > 0 {
		t.Fatalf("acknowledging h3: skipped %v, %v", skipped, err)
	}
	if !acked().Equal(h3) {
		t.Fatalf("relay's heads %v, want h3", acked())
	}
}

// A session that falls behind in applying what its subscription sends
// back of its own early pushes (a burst of edits, a pause) recognises
// each of them, not only the last push's: merging them instead would wait
// for the record's lock, which a later edit holds through its fsync, and
// the session, which also pushes, would fall further behind.
func TestOwnEarlyPushesComeBackBehind(t *testing.T) {
	r := mem(t)
	c := r.Collection("c")
	var pushed pushedHeads
	var all []crdt.Heads
	for i := range earlyEchoes + 3 {
		if err := c.Put("x", map[string]any{"n": i}); err != nil {
			t.Fatal(err)
		}
		h, err := c.Heads("x")
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, h)
		pushed = pushed.add(h)
	}
	if len(pushed) != earlyEchoes || !pushed.last().Equal(all[len(all)-1]) {
		t.Fatalf("remembers %d pushes, last %v; want %d, the last edit's", len(pushed), pushed.last(), earlyEchoes)
	}
	byKey := map[string]pushedHeads{earlyKey("c", "x"): pushed}
	// Every push still remembered comes back, oldest first, while the
	// acknowledged heads are the last push's: none to apply.
	var back []remoteRec
	for _, h := range all[3:] {
		back = append(back, remoteRec{id: "x", relay: h})
	}
	got, err := r.notHeld("c", back, byKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Fatalf("%d of %d of the device's own pushes left to apply, want 0", len(got), len(back))
	}
	// Older pushes than those remembered, and heads this device never
	// pushed (another device's edit), are applied.
	other := crdt.Heads{crdt.Hash{1}}
	got, err = r.notHeld("c", []remoteRec{{id: "x", relay: all[0]}, {id: "x", relay: other}}, byKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d left to apply, want 2", len(got))
	}
}

// An early message for a record this device is editing (its own push
// coming back early, or another device's edit of it) is left to the
// durable message without waiting for the record's lock, which the edit
// holds through its fsync: the session, which also pushes, would wait for
// the disk.
func TestEarlyMessageSkipsRecordBeingEdited(t *testing.T) {
	r := open(t, t.TempDir(), nil)
	gate := gateFsync(t, r)
	c := r.Collection("c")
	if err := c.Create("x", map[string]any{"n": 1}); err != nil {
		t.Fatal(err)
	}
	h1, err := c.Heads("x")
	if err != nil {
		t.Fatal(err)
	}
	gate.close()
	edited := make(chan error, 1)
	go func() { edited <- c.Update("x", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, 2) }) }()
	<-gate.held // the edit holds x's lock until its fsync is done
	edits := &localEdits{pushed: map[string]pushedHeads{}}
	applied := make(chan error, 1)
	go func() {
		applied <- r.applyEarly(context.Background(), edits, "c", []remoteRec{{id: "x", data: nil, relay: crdt.Heads{crdt.Hash{1}}}})
	}()
	select {
	case err := <-applied:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		gate.open(nil)
		t.Fatal("the early message waited for the record's lock, held through an edit's fsync")
	}
	gate.open(nil)
	if err := <-edited; err != nil {
		t.Fatal(err)
	}
	if h, err := c.Heads("x"); err != nil || h.Equal(h1) {
		t.Fatalf("x's heads %v (%v), want the edit's", h, err)
	}
}

// The ack writer's flush, which every live message merged waits for,
// hands nothing to the writer's goroutine when no acknowledgement is
// queued, and waits for those that are.
func TestAckFlush(t *testing.T) {
	w := &ackWriter{jobs: make(chan ackJob, 4), done: make(chan struct{}), again: make(chan struct{}, 1), skipped: map[string][]string{}}
	// No goroutine takes jobs yet: a flush that handed one over would
	// wait for the context.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.flush(ctx); err != nil {
		t.Fatalf("flush with nothing queued: %v", err)
	}
	if len(w.jobs) != 0 {
		t.Fatalf("flush queued %d jobs, want none", len(w.jobs))
	}
	w.r = mem(t)
	if err := w.add(ctx, "c", nil); err != nil {
		t.Fatal(err)
	}
	flushed := make(chan error, 1)
	go func() { flushed <- w.flush(ctx) }()
	select {
	case err := <-flushed:
		t.Fatalf("flush returned (%v) before the queued acknowledgement was recorded", err)
	case <-time.After(50 * time.Millisecond):
	}
	go w.run()
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	if n := w.queued.Load(); n != 0 {
		t.Fatalf("%d acknowledgements still counted as queued", n)
	}
	w.close()
}

// TestAckRecordingFailedPushesAgain: when recording the relay's
// acknowledgement of an early push fails (a store error), the records stay
// pending, and a live session, which pushes only what is edited, must be
// told to push them again the ordinary way.
func TestAckRecordingFailedPushesAgain(t *testing.T) {
	ackFault = func() error { return errors.New("injected store error") }
	t.Cleanup(func() { ackFault = nil })
	w := newAckWriter(mem(t))
	defer w.close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.add(ctx, "c", []outgoing{{id: "x", early: true}, {id: "y", early: true}}); err != nil {
		t.Fatal(err)
	}
	if err := w.flush(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.again:
	default:
		t.Fatal("a failed acknowledgement was not handed back to the session")
	}
	if got := w.takeSkipped()["c"]; !slices.Equal(got, []string{"x", "y"}) {
		t.Fatalf("records handed back: %v, want [x y]", got)
	}
}

// appendGate is a relay store whose appends wait while the gate is shut,
// then run (stored) or not, and fail with err if it is set: a relay that
// dies before its group is durable (not stored), or after it but before
// it answers (stored). Close leaves the store under it open, for the
// relay that follows.
type appendGate struct {
	relay.Store
	mu      sync.Mutex
	shut    chan struct{} // nil: open
	stored  bool
	err     error
	waiting chan struct{} // receives when an append starts waiting
}

func newAppendGate(s relay.Store) *appendGate {
	return &appendGate{Store: s, waiting: make(chan struct{}, 16)}
}

func (g *appendGate) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	g.mu.Lock()
	shut := g.shut
	g.mu.Unlock()
	if shut == nil {
		return g.Store.Append(ctx, c, fence, now, entries)
	}
	select {
	case g.waiting <- struct{}{}:
	default:
	}
	<-shut
	g.mu.Lock()
	stored, err := g.stored, g.err
	g.mu.Unlock()
	if !stored {
		return 0, err
	}
	seq, aerr := g.Store.Append(ctx, c, fence, now, entries)
	if err != nil {
		return 0, err
	}
	return seq, aerr
}

func (g *appendGate) Close() error { return nil }

func (g *appendGate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shut = make(chan struct{})
}

// open lets the appends waiting go on: stored or not, and failing with err
// if not nil. Later appends run as usual.
func (g *appendGate) open(stored bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stored, g.err = stored, err
	if g.shut != nil {
		close(g.shut)
		g.shut = nil
	}
}

// earlyEnv is a relay on a gated store and two live devices, a and b.
type earlyEnv struct {
	e      *syncEnv
	base   relay.Store
	gate   *appendGate
	a, b   *Replica
	feedB  *Feed
	coll   relay.Coll
	cursor func() uint64 // b's live cursor
}

func newEarlyEnv(t *testing.T, setupA ...func(a *Replica)) *earlyEnv {
	useEarlyApply(t)
	e := newSyncEnv(t)
	base := memstore.New()
	t.Cleanup(func() { base.Close() })
	gate := newAppendGate(base)
	e.swap(gate)
	// Before the relay's Close, which waits for the pushes the gate holds.
	t.Cleanup(func() { gate.open(true, nil) })
	env := &earlyEnv{e: e, base: base, gate: gate, coll: relay.Coll{Tenant: e.app.ID, Collection: "c"}}
	optsA, liveA := liveOptions(e)
	optsA.InMemory = true
	env.a = open(t, "", optsA)
	for _, f := range setupA {
		f(env.a) // before any sync starts
	}
	if err := env.a.AddProfile(e.profile("p")); err != nil {
		t.Fatal(err)
	}
	optsB, liveB := liveOptions(e)
	env.b = e.device(optsB)
	env.feedB = env.b.Collection("c").Watch(1024)
	t.Cleanup(env.feedB.Close)
	liveProfile(t, e, env.a, liveA)
	liveProfile(t, e, env.b, liveB)
	env.cursor = func() uint64 {
		st, err := env.b.loadSyncState("live", "c")
		if err != nil {
			t.Fatal(err)
		}
		return st.Cursor
	}
	if err := env.a.Collection("c").Create("r", map[string]any{"qty": int64(0)}); err != nil {
		t.Fatal(err)
	}
	waitValue(t, env.b, env.feedB, "r", "qty", 0)
	// A first sync pushes every record: past it, b pushes only what is
	// pending.
	mustSync(t, env.b, "p")
	return env
}

func (env *earlyEnv) head(t *testing.T) uint64 {
	h, err := env.base.Head(context.Background(), env.coll)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// A live device applies a change the relay has checked while the relay's
// append runs, and moves its cursor only once the append is durable.
func TestLiveEarlyApply(t *testing.T) {
	env := newEarlyEnv(t)
	ca := env.a.Collection("c")
	env.gate.close()
	if err := ca.Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, int64(1)) }); err != nil {
		t.Fatal(err)
	}
	<-env.gate.waiting
	before, head := env.cursor(), env.head(t)
	waitValue(t, env.b, env.feedB, "r", "qty", 1)
	if c := env.cursor(); c != before || c > head {
		t.Fatalf("b's cursor moved from %d to %d before the relay's append (head %d)", before, c, head)
	}
	env.gate.open(true, nil)
	if err := ca.Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, int64(2)) }); err != nil {
		t.Fatal(err)
	}
	// The value may come early again, ahead of the durable messages that
	// move the cursor, which the feed does not report: wait for those.
	waitValue(t, env.b, env.feedB, "r", "qty", 2)
	env.waitCursorPast(t, head)
}

// waitCursorPast waits, up to 20 s, for b's live cursor to pass head,
// looking again at each write of b's sync state (a Badger subscription).
func (env *earlyEnv) waitCursorPast(t *testing.T, head uint64) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	written, probed := make(chan struct{}, 1), make(chan struct{}, 1)
	probe := []byte("zz-test-probe")
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		env.b.db.Subscribe(ctx, func(kvs *badger.KVList) error {
			for _, kv := range kvs.Kv {
				ch := written
				if bytes.HasPrefix(kv.Key, probe) {
					ch = probed
				}
				select {
				case ch <- struct{}{}:
				default:
				}
			}
			return nil
		}, []pb.Match{{Prefix: syncStateKey("live", "c")}, {Prefix: probe}})
	}()
	defer func() { cancel(); <-stopped }()
	// Badger registers the subscriber once Subscribe runs and says nothing:
	// write a probe until the subscriber sees one, so no write of the
	// cursor after this is missed.
	for registered := false; !registered; {
		if err := env.b.update(func(txn *badger.Txn) error { return txn.Set(probe, nil) }); err != nil {
			t.Fatal(err)
		}
		select {
		case <-probed:
			registered = true
		case <-time.After(10 * time.Millisecond):
		}
	}
	timeout := time.NewTimer(20 * time.Second)
	defer timeout.Stop()
	for c := env.cursor(); c <= head; c = env.cursor() {
		select {
		case <-written:
		case <-timeout.C:
			t.Fatalf("b's cursor %d, want past %d: the durable message did not move it", c, head)
		}
	}
}

// The relay dies while a change it fanned out early is not durable:
// before its fsync (the change is lost) or after it, before it answers.
// The pusher had no acknowledgement, and here it goes offline for good;
// the other device applied the change early and marked the record
// pending. Once a relay runs again on the store, that device's next sync
// gives the relay the change if it lost it; no cursor names an entry the
// relay does not hold, and the two converge.
func TestLiveEarlyApplyRelayDies(t *testing.T) {
	for _, stored := range []bool{false, true} {
		t.Run(fmt.Sprintf("stored=%v", stored), func(t *testing.T) {
			env := newEarlyEnv(t)
			env.gate.close()
			if err := env.a.Collection("c").Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, int64(1)) }); err != nil {
				t.Fatal(err)
			}
			<-env.gate.waiting
			head := env.head(t)
			waitValue(t, env.b, env.feedB, "r", "qty", 1)
			if c := env.cursor(); c > head {
				t.Fatalf("b's cursor %d is past the relay's durable head %d", c, head)
			}
			// The relay dies: its push in flight fails. A new relay runs
			// on the store.
			restarted := make(chan struct{})
			go func() {
				defer close(restarted)
				env.e.rl.Restart(t, newAppendGate(env.base), nil)
			}()
			env.a.Close()
			env.gate.open(stored, errors.New("the relay died"))
			<-restarted
			if c, h := env.cursor(), env.head(t); c > h {
				t.Fatalf("b's cursor %d is past the relay's head %d", c, h)
			}
			mustSync(t, env.b, "p")
			doc, _, err := relay.Document(context.Background(), env.base, env.coll, "r")
			if err != nil {
				t.Fatal(err)
			}
			d, err := crdt.Load(doc, "")
			if err != nil {
				t.Fatal(err)
			}
			defer d.Free()
			h, err := env.b.Collection("c").Heads("r")
			if err != nil {
				t.Fatal(err)
			}
			if !h.Equal(d.Heads()) {
				t.Fatalf("b has heads %v, the relay %v: the change was lost", h, d.Heads())
			}
			if n, _ := env.b.Collection("c").PendingCount(); n != 0 {
				t.Fatalf("b has %d pending after syncing", n)
			}
			if c, h := env.cursor(), env.head(t); c > h {
				t.Fatalf("b's cursor %d is past the relay's head %d", c, h)
			}
		})
	}
}

// A live device applies early changes onto a record pending with nothing
// but earlier early changes: the second edit reaches it while the relay's
// append of the first is still held. Its cursor moves only once the
// appends are durable, and the record is settled by the durable messages.
func TestLiveEarlyApplyBuildsOnEarly(t *testing.T) {
	env := newEarlyEnv(t)
	ca := env.a.Collection("c")
	env.gate.close()
	if err := ca.Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, int64(1)) }); err != nil {
		t.Fatal(err)
	}
	<-env.gate.waiting
	before, head := env.cursor(), env.head(t)
	waitValue(t, env.b, env.feedB, "r", "qty", 1)
	if err := ca.Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, int64(2)) }); err != nil {
		t.Fatal(err)
	}
	waitValue(t, env.b, env.feedB, "r", "qty", 2)
	if c := env.cursor(); c != before || env.head(t) != head {
		t.Fatalf("b's cursor moved from %d to %d, the relay's head from %d to %d, with its append held", before, c, head, env.head(t))
	}
	env.gate.open(true, nil)
	if err := ca.Update("r", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, int64(3)) }); err != nil {
		t.Fatal(err)
	}
	waitValue(t, env.b, env.feedB, "r", "qty", 3)
	mustSync(t, env.a, "p")
	mustSync(t, env.b, "p")
	ha, err := ca.Heads("r")
	if err != nil {
		t.Fatal(err)
	}
	hb, err := env.b.Collection("c").Heads("r")
	if err != nil || !ha.Equal(hb) {
		t.Fatalf("a at %v, b at %v (%v)", ha, hb, err)
	}
	if n, _ := env.b.Collection("c").PendingCount(); n != 0 {
		t.Fatalf("b has %d pending after syncing", n)
	}
	if c, h := env.cursor(), env.head(t); c > h || c <= head {
		t.Fatalf("b's cursor %d, the relay's head %d: want past %d and not past the head", c, h, head)
	}
}
