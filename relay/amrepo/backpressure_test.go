package amrepo

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
)

// heldAppends is a store whose appends wait until release is closed.
type heldAppends struct {
	relay.Store
	release chan struct{}
}

func (s *heldAppends) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	select {
	case <-s.release:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return s.Store.Append(ctx, c, fence, now, entries)
}

// chargeCounter is a relay.Backend that counts what is charged to the
// relay's memory budget through it and not yet released.
type chargeCounter struct {
	relay.Backend
	held atomic.Int64
}

func (b *chargeCounter) ChargeMemory(n int64) func() {
	release := b.Backend.ChargeMemory(n)
	b.held.Add(n)
	return sync.OnceFunc(func() {
		b.held.Add(-n)
		release()
	})
}

// memoryBytes is ferry_relay_memory_bytes as reg has it.
func memoryBytes(t *testing.T, reg *prometheus.Registry) int64 {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "ferry_relay_memory_bytes" {
			return int64(mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	t.Fatal("no ferry_relay_memory_bytes")
	return 0
}

// syncV1 returns a version 1 sync message announcing heads and carrying
// chunk, a change.
func syncV1(heads crdt.Heads, chunk []byte) []byte {
	out := []byte{syncMsgV1}
	out = appendHashes(out, heads)
	out = appendHashes(out, nil)       // need
	out = binary.AppendUvarint(out, 0) // have
	out = binary.AppendUvarint(out, 1) // one change
	out = binary.AppendUvarint(out, uint64(len(chunk)))
	return append(out, chunk...)
}

// TestAutomergeBackPressure: a client floods one connection with sync
// messages carrying changes to many documents while the store holds
// every append. The relay stops reading the connection once its queued
// messages count for MaxQueuedBytes, rather than buffering the flood;
// once the store lets go, every change is stored and acknowledged.
func TestAutomergeBackPressure(t *testing.T) { floodHeld(t, false) }

// TestAutomergeKeepaliveWhileHeldBack: while the relay does not read a
// connection, the client's pongs wait unread; keepalive must not take
// that for a dead peer, or back-pressure would cut the connection.
func TestAutomergeKeepaliveWhileHeldBack(t *testing.T) { floodHeld(t, true) }

// floodHeld floods a connection while the store holds appends (see
// TestAutomergeBackPressure); with ping, keepalive ticks while the
// connection is held back, with a ping timeout far shorter than the
// hold.
func floodHeld(t *testing.T, ping bool) {
	const (
		bound  = 96 << 10
		docs   = 16
		perDoc = 4
	)
	st := &heldAppends{Store: memstore.New(), release: make(chan struct{})}
	release := sync.OnceFunc(func() { close(st.release) })
	tick := make(chan time.Time)
	reg := prometheus.NewRegistry()
	tr := newTestRelay(t, st, func(o *testOptions) {
		o.Registry = reg
		o.Limits.MaxInflated = 8 << 10
		o.Automerge.MaxQueuedBytes = bound
		o.CompactInterval = -1
		if ping {
			o.PingInterval = time.Millisecond
		}
	})
	// Before any connection: what the endpoint charges to the budget.
	charged := &chargeCounter{Backend: tr.am.b}
	tr.am.b = charged
	skipped := make(chan struct{})
	if ping {
		tr.am.hooks.tick = tick
		tr.am.hooks.skipped = func() { skipped <- struct{}{} }
	}
	t.Cleanup(release) // before the relay's shutdown: a failure must not leave pushes held

	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	pad := func() string {
		b := make([]byte, 1500)
		for i := range b {
			b[i] = byte('a' + rng.IntN(26))
		}
		return string(b)
	}
	ids := make([]string, docs)
	records := make([]string, docs)
	editors := make([]*storetest.Editor, docs)
	for j := range docs {
		ids[j], records[j] = newDocID(t)
		editors[j] = storetest.NewEditor(t, fmt.Sprintf("%04x", j+1))
	}
	// Each document's changes in order, the documents interleaved.
	var frames [][]byte
	total := 0
	for k := range perDoc {
		for j := range docs {
			ch := editors[j].Edit(map[string]any{"k": int64(k), "pad": pad()})
			b, err := encodeAMMessage(&amMessage{Type: amSync, SenderID: "peer", TargetID: "ferry-relay/todos", DocumentID: ids[j], Data: syncV1(editors[j].Doc.Heads(), ch)})
			if err != nil {
				t.Fatal(err)
			}
			frames = append(frames, b)
			total += len(b)
		}
	}

	var read atomic.Int64
	allRead := make(chan struct{})
	paused := make(chan *amConn, 1)
	tr.am.hooks.read = func(_ *amConn, n int) {
		if read.Add(int64(n)) == int64(total) {
			close(allRead)
		}
	}
	tr.am.hooks.paused = func(c *amConn, used int64) {
		select {
		case paused <- c:
		default:
		}
	}
	p, hello := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "peer")
	if hello.Type != amPeer {
		t.Fatalf("join answered %+v", hello)
	}
	sent := make(chan error, 1)
	go func() {
		for _, b := range frames {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			err := p.ws.Write(ctx, websocket.MessageBinary, b)
			cancel()
			if err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()

	var conn *amConn
	select {
	case conn = <-paused:
	case <-allRead:
		t.Fatalf("the relay read all %d bytes of the flood while its pushes were held", total)
	}
	used, peak := conn.budget.usage()
	if used > bound || peak > bound {
		t.Fatalf("queued messages count for %d bytes (at most %d), over the bound %d", used, peak, bound)
	}
	if n := read.Load(); n >= int64(total) {
		t.Fatalf("the relay read %d of %d bytes before it paused", n, total)
	}
	t.Logf("paused after reading %d of %d bytes, %d queued", read.Load(), total, used)
	// The relay's memory budget counts the queued messages too: exactly
	// what they count for here (each is smaller than the bound), beside
	// the held pushes' own shares.
	if c := charged.held.Load(); c != used {
		t.Errorf("the queued messages count for %d bytes, and %d are charged to the relay's memory budget", used, c)
	}
	if mem := memoryBytes(t, reg); mem < used {
		t.Errorf("the relay counts %d bytes of memory in use, less than the %d queued", mem, used)
	}

	if ping {
		for range 3 {
			// Its pushes held, an ended connection closes only once
			// released: look at its context.
			select {
			case tick <- time.Time{}:
			case <-conn.ctx.Done():
				t.Fatal("keepalive ended the connection while it was held back")
			}
			select {
			case <-skipped:
			case <-conn.ctx.Done():
				t.Fatal("keepalive ended the connection while it was held back")
			}
		}
	}
	release()
	acked := map[string]bool{}
	for len(acked) < docs {
		m := p.next()
		if m == nil {
			t.Fatalf("connection closed: %v", <-p.errc)
		}
		if m.Type == amError {
			t.Fatalf("relay error: %s", m.Message)
		}
		if m.Type != amSync {
			continue
		}
		sm, err := parseSyncMessage(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		for j, id := range ids {
			if id == m.DocumentID && crdt.Heads(sm.heads).Equal(editors[j].Doc.Heads()) {
				acked[id] = true
			}
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	coll := relay.Coll{Tenant: "shop", Collection: "todos"}
	for j, r := range records {
		rec, err := tr.store.Record(context.Background(), coll, r)
		if err != nil {
			t.Fatal(err)
		}
		if !rec.Heads.Equal(editors[j].Doc.Heads()) {
			t.Fatalf("document %d stored at %v, want %v", j, rec.Heads, editors[j].Doc.Heads())
		}
		if f := storetest.FieldsAfter(t, rec.Data()); f["k"] != int64(perDoc-1) {
			t.Fatalf("document %d stored k=%v", j, f["k"])
		}
	}
	if _, peak := conn.budget.usage(); peak > bound {
		t.Fatalf("queued messages counted for up to %d bytes, over the bound %d", peak, bound)
	}
}

// TestAutomergeWaitingChangesBoundedPerConnection: changes waiting for
// changes they depend on count across a connection's documents, within
// MaxWaitingBytes (each document's within max_record too); past it the
// connection is refused, with nothing of them stored.
func TestAutomergeWaitingChangesBoundedPerConnection(t *testing.T) {
	const bound = 8 << 10
	tr := newTestRelay(t, memstore.New(), func(o *testOptions) { o.Automerge.MaxWaitingBytes = bound })
	p, _ := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "p")
	rng := rand.New(rand.NewPCG(1, 2))
	waiting := 0
	for i := 0; ; i++ {
		docID, _ := newDocID(t)
		ed := storetest.NewEditor(t, "")
		ed.Edit(map[string]any{"n": 1}) // never sent
		b := make([]byte, 3000)
		for i := range b {
			b[i] = byte('a' + rng.IntN(26))
		}
		second := ed.Edit(map[string]any{"pad": string(b)})
		p.send(&amMessage{Type: amSync, SenderID: "p", DocumentID: docID, Data: syncV1(ed.Doc.Heads(), second)})
		waiting += len(second)
		m := p.next()
		if waiting <= bound {
			if m == nil || m.Type != amSync {
				t.Fatalf("document %d, %d bytes waiting: answered %+v", i, waiting, m)
			}
			continue
		}
		if m == nil || m.Type != amError || !strings.Contains(m.Message, "on this connection") {
			t.Fatalf("document %d, %d bytes waiting, over %d: answered %+v", i, waiting, bound, m)
		}
		break
	}
	if err := p.closed(); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Fatalf("closed with %v", err)
	}
	if h, _ := tr.store.Head(context.Background(), relay.Coll{Tenant: "shop", Collection: "todos"}); h != 0 {
		t.Fatalf("log head %d: waiting changes were stored", h)
	}
}

// TestAutomergeSyncStatesBoundedPerConnection: automerge's sync state
// keeps each document's last bloom filter from the peer, so a peer could
// make the relay keep a frame's worth per document; what they keep counts
// across the connection's documents, and past MaxSyncStateBytes the
// connection is refused.
func TestAutomergeSyncStatesBoundedPerConnection(t *testing.T) {
	const bound = 16 << 10
	tr := newTestRelay(t, memstore.New(), func(o *testOptions) { o.Automerge.MaxSyncStateBytes = bound })
	p, _ := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "p")
	// A valid bloom filter of 4,800 entries, 10 bits each, 7 probes.
	bloom := binary.AppendUvarint(nil, 4800)
	bloom = binary.AppendUvarint(bloom, 10)
	bloom = binary.AppendUvarint(bloom, 7)
	bloom = append(bloom, make([]byte, 6000)...)
	var heads crdt.Heads
	for i := range 8 {
		heads = append(heads, crdt.Hash{byte(i + 1)}) // the peer's, unknown to the relay
		msg := (&syncMessage{heads: heads[i : i+1], have: []syncHave{{bloom: bloom}}}).encodeV1()
		docID, _ := newDocID(t)
		p.send(&amMessage{Type: amSync, SenderID: "p", DocumentID: docID, Data: msg})
		m := p.next()
		if (i+1)*len(msg) <= bound {
			if m == nil || m.Type != amSync {
				t.Fatalf("document %d: answered %+v", i, m)
			}
			continue
		}
		if m == nil || m.Type != amError || !strings.Contains(m.Message, "bloom filters") {
			t.Fatalf("document %d, %d bytes kept, over %d: answered %+v", i, (i+1)*len(msg), bound, m)
		}
		return
	}
	t.Fatal("never refused")
}
