package relay_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// Pipelined pushes: a device may send a connection's next push before the
// relay has answered the last. The relay checks and queues each for its
// group commit in turn, reads the next meanwhile, and answers them in the
// order sent, each only once durable.

// pipeStore wraps a Store so a test can hold the next Append and make it
// fail, and hold the reads of one record.
type pipeStore struct {
	relay.Store
	entered chan struct{} // a held Append has started waiting

	mu       sync.Mutex
	hold     chan struct{} // the next Append waits for it to close
	fail     error         // and then fails with it, unless nil
	readHold string        // reads of this record wait for readGate
	readGate chan struct{}
}

func newPipeStore() *pipeStore {
	return &pipeStore{Store: memstore.New(), entered: make(chan struct{}, 1)}
}

func (p *pipeStore) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	p.mu.Lock()
	hold, fail := p.hold, p.fail
	p.hold, p.fail = nil, nil
	p.mu.Unlock()
	if hold != nil {
		p.entered <- struct{}{}
		<-hold
	}
	if fail != nil {
		return 0, fail
	}
	return p.Store.Append(ctx, c, fence, now, entries)
}

func (p *pipeStore) Record(ctx context.Context, c relay.Coll, record string) (relay.Record, error) {
	p.mu.Lock()
	gate := p.readGate
	if record != p.readHold {
		gate = nil
	}
	p.mu.Unlock()
	if gate != nil {
		<-gate
	}
	return p.Store.Record(ctx, c, record)
}

// holdNext holds the next Append until release; it then fails with fail
// (nil: it goes through).
func (p *pipeStore) holdNext(fail error) (release func()) {
	ch := make(chan struct{})
	p.mu.Lock()
	p.hold, p.fail = ch, fail
	p.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

// holdReads holds reads of record until release.
func (p *pipeStore) holdReads(record string) (release func()) {
	ch := make(chan struct{})
	p.mu.Lock()
	p.readHold, p.readGate = record, ch
	p.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			p.readHold, p.readGate = "", nil
			p.mu.Unlock()
			close(ch)
		})
	}
}

// rawConn is a device connection that sends requests with the ids it is
// given and reads answers in the order they come.
type rawConn struct {
	t    *testing.T
	conn *transport.Conn
}

func (tr *testRelay) raw(replica string) *rawConn {
	tr.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := transport.Dial(ctx, tr.url, &transport.Options{PingInterval: -1})
	if err != nil {
		tr.t.Fatal(err)
	}
	tr.t.Cleanup(func() { conn.Close() })
	shop := tr.apps["shop"]
	rc := &rawConn{t: tr.t, conn: conn}
	rc.send(1000, &transport.Hello{APIKey: shop.APIKey, Token: tr.tokens["shop"], ReplicaID: replica, Versions: transport.SupportedVersions()})
	if env := rc.recv(); env.Type != transport.TypeWelcome {
		tr.t.Fatalf("hello answered with %s", env.Type)
	}
	return rc
}

func (rc *rawConn) send(id uint64, req transport.Body) {
	rc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rc.conn.SendBody(ctx, id, req); err != nil {
		rc.t.Fatal(err)
	}
}

func (rc *rawConn) recv() *transport.Envelope {
	rc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	env, err := rc.conn.Recv(ctx)
	if err != nil {
		rc.t.Fatal(err)
	}
	return env
}

// answers reads n answers and returns them, checking they answer ids
// first..first+n-1 in that order.
func (rc *rawConn) answers(first uint64, n int) []*transport.Envelope {
	rc.t.Helper()
	var out []*transport.Envelope
	for i := range n {
		env := rc.recv()
		if env.ID != first+uint64(i) {
			rc.t.Fatalf("answer %d is to request %d (%s), want %d: answers out of order", i, env.ID, env.Type, first+uint64(i))
		}
		out = append(out, env)
	}
	return out
}

func ackOf(t *testing.T, env *transport.Envelope) *transport.Ack {
	t.Helper()
	if env.Type == transport.TypeError {
		e, _ := transport.DecodeBody[transport.Error](env)
		t.Fatalf("request %d refused: %v", env.ID, e)
	}
	a, err := transport.DecodeBody[transport.Ack](env)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func errorOf(t *testing.T, env *transport.Envelope) *transport.Error {
	t.Helper()
	if env.Type != transport.TypeError {
		t.Fatalf("request %d answered with %s, want an error", env.ID, env.Type)
	}
	e, err := transport.DecodeBody[transport.Error](env)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestPipelinedPushesInFlightTogether: while one push's group commit is
// held, the relay reads and queues the pushes sent after it on the same
// connection (it does not wait for the first one's fsync), answers none of
// them before its group is durable, and then answers all of them in the
// order sent, with the sequence numbers of that order. A pull sent behind
// them is answered after them and sees them all.
func TestPipelinedPushesInFlightTogether(t *testing.T) {
	ps := newPipeStore()
	tr := newTestRelay(t, ps, nil)
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	queued := tr.watchQueue(coll)
	dev := tr.raw("dev")
	ea, eb := storetest.NewEditor(t, "a1"), storetest.NewEditor(t, "b1")

	release := ps.holdNext(nil)
	t.Cleanup(release) // a failed test lets the relay end
	dev.send(1, pushOf("c", 0, rec("a", ea.Edit(map[string]any{"n": 1}))))
	await(t, queued, "a push queued")
	await(t, ps.entered, "push 1 being appended") // push 1 is being appended
	dev.send(2, pushOf("c", 0, rec("a", ea.Edit(map[string]any{"n": 2}))))
	dev.send(3, pushOf("c", 0, rec("b", eb.Edit(map[string]any{"n": 1}))))
	dev.send(4, &transport.Pull{Collection: "c"})
	// Pushes 2 and 3 are checked and queued while push 1's append is
	// held: the relay read them without waiting for its answer.
	if n := await(t, queued, "push 2 queued"); n != 1 {
		t.Fatalf("queue holds %d pushes after push 2, want 1 (push 1 is being written)", n)
	}
	if n := await(t, queued, "push 3 queued"); n != 2 {
		t.Fatalf("queue holds %d pushes after push 3, want 2", n)
	}
	// Nothing is answered while push 1 is not durable.
	var released atomic.Bool
	answers := make(chan []*transport.Envelope, 1)
	go func() {
		var got []*transport.Envelope
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for range 4 {
			env, err := dev.conn.Recv(ctx)
			if err != nil {
				t.Error(err)
				break
			}
			if !released.Load() {
				t.Errorf("answer to request %d (%s) before push 1 was durable", env.ID, env.Type)
			}
			got = append(got, env)
		}
		answers <- got
	}()
	time.Sleep(20 * time.Millisecond) // room for a wrong early answer
	released.Store(true)
	release()

	got := <-answers
	if len(got) != 4 {
		t.FailNow()
	}
	for i, env := range got {
		if env.ID != uint64(i+1) {
			t.Fatalf("answer %d is to request %d, want %d: answers out of order", i, env.ID, i+1)
		}
	}
	for i, want := range []uint64{1, 2, 3} {
		if a := ackOf(t, got[i]); a.Seq != want {
			t.Errorf("push %d acked with seq %d, want %d", i+1, a.Seq, want)
		}
	}
	ch, err := transport.DecodeBody[transport.Changes](got[3])
	if err != nil {
		t.Fatalf("pull: %v (%s)", err, got[3].Type)
	}
	if ch.Next != 3 {
		t.Errorf("pull behind the pushes reads up to %d, want 3", ch.Next)
	}
	if f := storedFields(t, tr, coll, "a"); f["n"] != int64(2) {
		t.Errorf("record a = %v, want n 2", f)
	}
}

// TestPipelinedPushAfterAFailedGroup: the store refuses push 1's group
// while pushes 2 (building on push 1's change) and 3 (another record) of
// the same connection wait behind it. Push 1 is refused; push 2, merged
// again only once push 1 is answered, is refused as it builds on changes
// the relay does not hold; push 3 is stored and acknowledged. Answers come
// in order, and no push is acknowledged that is not stored.
func TestPipelinedPushAfterAFailedGroup(t *testing.T) {
	ps := newPipeStore()
	tr := newTestRelay(t, ps, nil)
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	queued := tr.watchQueue(coll)
	dev := tr.raw("dev")
	ea, eb := storetest.NewEditor(t, "a1"), storetest.NewEditor(t, "b1")

	release := ps.holdNext(errors.New("disk on fire"))
	t.Cleanup(release) // a failed test lets the relay end
	dev.send(1, pushOf("c", 0, rec("a", ea.Edit(map[string]any{"n": 1}))))
	await(t, queued, "a push queued")
	await(t, ps.entered, "push 1 being appended")
	dev.send(2, pushOf("c", 0, rec("a", ea.Edit(map[string]any{"n": 2}))))
	dev.send(3, pushOf("c", 0, rec("b", eb.Edit(map[string]any{"n": 1}))))
	await(t, queued, "a push queued")
	await(t, queued, "a push queued")
	release()

	got := dev.answers(1, 3)
	if e := errorOf(t, got[0]); e.Code != transport.CodeInternal {
		t.Errorf("push 1: %v, want internal", e)
	}
	if e := errorOf(t, got[1]); e.Code != transport.CodeInvalidChange {
		t.Errorf("push 2, built on the refused push 1: %v, want invalid_change", e)
	}
	if a := ackOf(t, got[2]); a.Seq != 1 {
		t.Errorf("push 3 acked with seq %d, want 1", a.Seq)
	}
	if _, _, err := relay.Document(context.Background(), tr.store, coll, "a"); !errors.Is(err, relay.ErrNotFound) {
		t.Errorf("record a, never acknowledged: %v, want not found", err)
	}
	if f := storedFields(t, tr, coll, "b"); f["n"] != int64(1) {
		t.Errorf("record b = %v, want n 1", f)
	}
}

// TestPipelinedPushesMergedAgainInOrder: push 1's group conflicts (another
// relay process wrote a record), so push 1 and push 2 behind it, which
// builds on push 1's change, are both merged again. Push 1's second merge
// is slowed (a read of its other record is held for a moment): push 2
// waits for push 1 to be answered before it is merged again, rather than
// overtaking it and being refused for a missing dependency. Both are
// stored and acknowledged, in order.
func TestPipelinedPushesMergedAgainInOrder(t *testing.T) {
	ps := newPipeStore()
	tr := newTestRelay(t, ps, nil)
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	queued := tr.watchQueue(coll)
	dev := tr.raw("dev")
	ea, ez := storetest.NewEditor(t, "a1"), storetest.NewEditor(t, "f1")

	release := ps.holdNext(&relay.ConflictError{Record: "a"})
	t.Cleanup(release) // a failed test lets the relay end
	dev.send(1, pushOf("c", 0, rec("a", ea.Edit(map[string]any{"n": 1})), rec("z", ez.Edit(map[string]any{"n": 1}))))
	await(t, queued, "a push queued")
	await(t, ps.entered, "push 1 being appended")
	dev.send(2, pushOf("c", 0, rec("a", ea.Edit(map[string]any{"n": 2}))))
	await(t, queued, "a push queued")
	// Push 1's merge again reads z from the store (its document was
	// dropped with the failed group): hold that read a while.
	releaseZ := ps.holdReads("z")
	release()
	time.AfterFunc(200*time.Millisecond, releaseZ)

	got := dev.answers(1, 2)
	if a := ackOf(t, got[0]); a.Seq != 2 {
		t.Errorf("push 1 acked with seq %d, want 2 (its two records)", a.Seq)
	}
	if a := ackOf(t, got[1]); a.Seq != 3 {
		t.Errorf("push 2 acked with seq %d, want 3", a.Seq)
	}
	if f := storedFields(t, tr, coll, "a"); f["n"] != int64(2) {
		t.Errorf("record a = %v, want n 2", f)
	}
}

// TestShutdownAnswersPipelinedPushes: a relay shutting down while a
// connection has pushes in flight makes them durable and answers them all
// before it closes the connection.
func TestShutdownAnswersPipelinedPushes(t *testing.T) {
	ps := newPipeStore()
	tr := newTestRelay(t, ps, nil)
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	queued := tr.watchQueue(coll)
	dev := tr.raw("dev")
	ea := storetest.NewEditor(t, "a1")

	release := ps.holdNext(nil)
	t.Cleanup(release) // a failed test lets the relay end
	dev.send(1, pushOf("c", 0, rec("a", ea.Edit(map[string]any{"n": 1}))))
	await(t, queued, "a push queued")
	await(t, ps.entered, "push 1 being appended")
	dev.send(2, pushOf("c", 0, rec("a", ea.Edit(map[string]any{"n": 2}))))
	await(t, queued, "a push queued")
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shut <- tr.srv.Shutdown(ctx)
	}()
	release()
	got := dev.answers(1, 2)
	ackOf(t, got[0])
	if a := ackOf(t, got[1]); a.Seq != 2 {
		t.Errorf("push 2 acked with seq %d, want 2", a.Seq)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if f := storedFields(t, tr, coll, "a"); f["n"] != int64(2) {
		t.Errorf("record a = %v, want n 2", f)
	}
}

func storedFields(t *testing.T, tr *testRelay, c relay.Coll, record string) map[string]any {
	t.Helper()
	doc, _, err := relay.Document(context.Background(), tr.store, c, record)
	if err != nil {
		t.Fatalf("record %s: %v", record, err)
	}
	return storetest.FieldsAfter(t, doc)
}

// await returns what ch receives, failing the test if nothing comes within
// 10 seconds (what it waits for did not happen).
func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("waited 10s for %s", what)
	}
	panic("unreachable")
}
