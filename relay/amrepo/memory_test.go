package amrepo

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// fieldsOf returns n integer fields named from prefix: n operations.
func fieldsOf(prefix string, n int) map[string]any {
	m := make(map[string]any, n)
	for i := range n {
		m[fmt.Sprint(prefix, i)] = int64(i)
	}
	return m
}

// TestAutomergeRecordOpsLimit: a document synced on /automerge comes to
// max_record_ops and is stored; a change past it is refused with an
// error naming the limit, and stores nothing.
func TestAutomergeRecordOpsLimit(t *testing.T) {
	const maxOps = 50
	tr := newTestRelay(t, memstore.New(), func(o *testOptions) { o.Limits.MaxRecordOps = maxOps })
	p, hello := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "peer")
	if hello.Type != amPeer {
		t.Fatalf("join answered %+v", hello)
	}
	coll := relay.Coll{Tenant: "shop", Collection: "todos"}
	docID, _ := newDocID(t)
	p.edit(docID, fieldsOf("a", maxOps))
	p.sync(docID, amSync)
	p.until(func(m *amMessage) bool { return m.Type == amSync && p.relayHas(m, docID) })
	head, _ := tr.store.Head(context.Background(), coll)
	if head == 0 {
		t.Fatal("the document at max_record_ops was not stored")
	}
	p.edit(docID, fieldsOf("b", 1))
	p.sync(docID, amSync)
	m := p.until(func(m *amMessage) bool { return m.Type == amError })
	if !strings.Contains(m.Message, "too_large") || !strings.Contains(m.Message, "max_record_ops") {
		t.Fatalf("a change past max_record_ops answered %+v", m)
	}
	if h, _ := tr.store.Head(context.Background(), coll); h != head {
		t.Fatalf("the refused change moved the log from %d to %d", head, h)
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// syncV2 returns a version 2 sync message announcing heads and carrying
// chunk (a whole saved document, or changes).
func syncV2(heads crdt.Heads, chunk []byte) []byte {
	out := []byte{syncMsgV2}
	out = appendHashes(out, heads)
	out = appendHashes(out, nil)       // need
	out = binary.AppendUvarint(out, 0) // have
	out = binary.AppendUvarint(out, 1) // one chunk
	out = binary.AppendUvarint(out, uint64(len(chunk)))
	return append(out, chunk...)
}

// amRefused sends a sync message for a fresh document on /automerge and
// returns the error the relay answers with, and the Go heap it allocated
// meanwhile (the peer's included). The connection must then close, with
// nothing stored.
func amRefused(t *testing.T, tr *testRelay, heads crdt.Heads, data []byte) (string, uint64) {
	t.Helper()
	p, _ := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "peer")
	docID, _ := newDocID(t)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	p.send(&amMessage{Type: amSync, SenderID: "peer", TargetID: "ferry-relay", DocumentID: docID, Data: syncV2(heads, data)})
	m := p.next()
	runtime.ReadMemStats(&ms)
	if m == nil || m.Type != amError {
		t.Fatalf("answered %+v, want an error", m)
	}
	if h, _ := tr.store.Head(context.Background(), relay.Coll{Tenant: "shop", Collection: "todos"}); h != 0 {
		t.Fatalf("log head %d after a refused message", h)
	}
	return m.Message, ms.TotalAlloc - before
}

// TestAutomergeDocumentInflationBudgeted: a version 2 sync message of a
// few kilobytes holding a saved document whose columns inflate to 8 MiB
// is refused within max_inflated (1 MiB), before the document is loaded.
func TestAutomergeDocumentInflationBudgeted(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	ed := storetest.NewEditor(t, "dd01")
	ed.Edit(map[string]any{"blob": strings.Repeat("x", 8<<20)})
	saved := ed.Doc.Save()
	heads := ed.Doc.Heads()
	ed.Doc.Free()
	if len(saved) > 64<<10 {
		t.Fatalf("the saved document is %d bytes", len(saved))
	}
	msg, alloc := amRefused(t, tr, heads, saved)
	if !strings.Contains(msg, "too_large") || !strings.Contains(msg, "max_inflated") {
		t.Fatalf("a document inflating to 8 MiB answered %q", msg)
	}
	// Framing inflates up to the 1 MiB budget; loading the document would
	// take the 8 MiB string and more.
	if alloc > 6<<20 {
		t.Errorf("refusing a %d-byte message allocated %.1f MiB", len(saved), mib(int64(alloc)))
	}
}

// TestAutomergeChangeInflationBudgeted: a sync message whose change chunk
// inflates to 64 MiB is refused within max_inflated, as a push on /ws is,
// without inflating the whole chunk first.
func TestAutomergeChangeInflationBudgeted(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	bomb := deflateBomb(t)
	msg, alloc := amRefused(t, tr, nil, bomb)
	if !strings.Contains(msg, "too_large") || !strings.Contains(msg, "max_inflated") {
		t.Fatalf("a change inflating to 64 MiB answered %q", msg)
	}
	if alloc > 16<<20 {
		t.Errorf("refusing a %d-byte message allocated %.1f MiB", len(bomb), mib(int64(alloc)))
	}
}

// TestAutomergeDocumentOpsLimit: a version 2 sync message holding a saved
// document of more operations than max_record_ops is refused before the
// document is loaded (the error counts the document's operations, known
// only from its columns), however few bytes it takes.
func TestAutomergeDocumentOpsLimit(t *testing.T) {
	const maxOps = 10_000
	tr := newTestRelay(t, memstore.New(), func(o *testOptions) { o.Limits.MaxRecordOps = maxOps })
	ed := storetest.NewEditor(t, "dd02")
	vals := make([]any, 3*maxOps)
	for i := range vals {
		vals[i] = int64(7)
	}
	ed.Edit(map[string]any{"list": vals})
	saved := ed.Doc.Save()
	heads := ed.Doc.Heads()
	ed.Doc.Free()
	msg, _ := amRefused(t, tr, heads, saved)
	if !strings.Contains(msg, "too_large") || !strings.Contains(msg, "max_record_ops") || !strings.Contains(msg, "whole document of 30001 operations") {
		t.Fatalf("a document of %d operations in %d bytes answered %q", 3*maxOps+1, len(saved), msg)
	}
}

// deflateBomb returns a compressed change chunk of about 65 KB that
// inflates to 64 MiB (its checksum is garbage: framing inflates first).
// The DEFLATE stream is one flushed, byte-aligned block of 1 MiB of zeros
// repeated 64 times, then an empty final block: compressing 64 MiB would
// take seconds under the race detector.
func deflateBomb(t *testing.T) []byte {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestCompression)
	w.Write(make([]byte, 1<<20))
	w.Flush()
	stream := append(bytes.Repeat(buf.Bytes(), 64), 1, 0, 0, 0xff, 0xff)
	b := []byte{0x85, 0x6f, 0x4a, 0x83, 1, 2, 3, 4, 2}
	b = binary.AppendUvarint(b, uint64(len(stream)))
	return append(b, stream...)
}

// recordReads is a store that counts whole-record reads.
type recordReads struct {
	relay.Store
	n atomic.Int64
}

func (s *recordReads) Record(ctx context.Context, c relay.Coll, id string) (relay.Record, error) {
	s.n.Add(1)
	return s.Store.Record(ctx, c, id)
}

// TestAutomergeAnswersFromTheCache: a record no push has loaded (stored
// before the relay started) is read from the store and loaded once, into
// the relay's document cache, however many sync messages ask for it and
// however many log entries then change it: every answer comes from the
// cached document.
func TestAutomergeAnswersFromTheCache(t *testing.T) {
	st := &recordReads{Store: memstore.New()}
	// No compaction, which reads the record too.
	tr := newTestRelay(t, st, func(o *testOptions) { o.CompactInterval = -1 })
	coll := relay.Coll{Tenant: "shop", Collection: "todos"}
	docID, record := newDocID(t)
	ed := storetest.NewEditor(t, "dd01")
	ch := ed.Edit(map[string]any{"title": "stored before", "pad": strings.Repeat("x", 4000)})
	if _, err := st.Append(context.Background(), coll, 0, tr.clock.Now(), []relay.Entry{{Record: record, Changes: ch, Hashes: ed.Doc.Heads(), Heads: ed.Doc.Heads()}}); err != nil {
		t.Fatal(err)
	}
	const peers = 20
	var first *goPeer
	for i := range peers {
		p, _ := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), fmt.Sprint("peer-", i))
		p.sync(docID, amRequest)
		p.until(func(m *amMessage) bool { return m.Type == amSync && p.field(docID, "title") == "stored before" })
		if i == 0 {
			first = p
		} else {
			p.ws.CloseNow()
		}
	}
	if n := st.n.Load(); n > 1 {
		t.Errorf("%d requests of an unchanged record read it from the store %d times, want once", peers, n)
	}
	// Devices change it: each log entry is sent to the open peer from the
	// cached document, which the pushes merged into. Each edit is awaited
	// before the next push: a read while a push to the record is not yet
	// durable loads a copy of its own from the store, by design.
	dev := tr.client("shop")
	const edits = 20
	for i := range edits {
		mustCall[transport.Ack](t, dev, pushOf("todos", 0, rec(record, ed.Edit(map[string]any{"n": int64(i)}))))
		first.until(func(m *amMessage) bool { return first.field(docID, "n") == int64(i) })
	}
	if n := st.n.Load(); n > 1 {
		t.Errorf("after %d requests and %d pushes the record was read from the store %d times, want once", peers, edits, n)
	}
}
