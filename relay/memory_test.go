package relay

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
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

// TestRecordOpsLimit: on /ws, pushes bring a record right to
// max_record_ops and are stored; one operation more is refused with
// too_large, and stores nothing.
func TestRecordOpsLimit(t *testing.T) {
	const maxOps = 50
	tr := newTestRelay(t, NewMemStore(), func(o *Options) { o.Limits.MaxRecordOps = maxOps })
	a := tr.client("shop")
	coll := Coll{"shop", "c"}
	ed := newEditor(t, "aa01")
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", ed.edit(fieldsOf("a", 30)))))
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", ed.edit(fieldsOf("b", maxOps-30)))))
	head, _ := tr.store.Head(context.Background(), coll)
	_, err := call[transport.Ack](t, a, pushOf("c", 0, rec("r", ed.edit(fieldsOf("c", 1)))))
	var te *transport.Error
	if !errors.As(err, &te) || te.Code != transport.CodeTooLarge || !strings.Contains(te.Message, "max_record_ops") {
		t.Fatalf("a push past max_record_ops: %v, want too_large naming max_record_ops", err)
	}
	if h, _ := tr.store.Head(context.Background(), coll); h != head {
		t.Fatalf("the refused push moved the log from %d to %d", head, h)
	}
	// Another record is not held back by this one.
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("s", newEditor(t, "aa02").edit(fieldsOf("a", maxOps)))))
}

// TestAutomergeRecordOpsLimit: a document synced on /automerge comes to
// max_record_ops and is stored; a change past it is refused with an
// error naming the limit, and stores nothing.
func TestAutomergeRecordOpsLimit(t *testing.T) {
	const maxOps = 50
	tr := newTestRelay(t, NewMemStore(), func(o *Options) { o.Limits.MaxRecordOps = maxOps })
	p, hello := dialAM(t, tr.amURL("/todos", tr.amCreds("shop")), "peer")
	if hello.Type != amPeer {
		t.Fatalf("join answered %+v", hello)
	}
	coll := Coll{"shop", "todos"}
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

// objectHeavyRecord returns a record of 2,000 small maps in a list, each
// with a list of its own, written by 40 changes and saved whole: about
// 50 KB, 28,000 operations, and some 25 MiB once loaded.
func objectHeavyRecord(t testing.TB, actor string) []byte {
	ed := newEditor(t, actor)
	defer ed.doc.Free()
	n := 0
	for range 40 {
		items := make([]any, 50)
		for i := range items {
			items[i] = map[string]any{"id": int64(n), "title": fmt.Sprint("item ", n), "done": n%3 == 0, "tags": []any{"a", "b"}}
			n++
		}
		if err := ed.doc.InsertAt(crdt.Path{"items"}, n-50, items...); err != nil {
			t.Fatal(err)
		}
		if _, err := ed.doc.Commit("", time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	return ed.doc.Save()
}

// TestDocCacheMemory pushes object-heavy records to a relay in a process
// of its own and measures its resident memory: with a cache large enough
// for all of them, what the cache accounts must be within a factor of two
// of what the process grew by; with a cache of 32 MiB, the process must
// grow by at most twice that (the documents in the cache, one being
// merged, the compactor's, and what the allocators keep).
func TestDocCacheMemory(t *testing.T) {
	if os.Getenv("FERRY_DOCCACHE_CHILD") != "" {
		docCacheChild(t)
		return
	}
	if runtime.GOOS != "linux" {
		t.Skip("resident memory is read from /proc")
	}
	if testing.Short() || raceBuild {
		t.Skip("loads large documents; measures memory without the race detector")
	}
	for _, tc := range []struct {
		name    string
		cache   int64
		records int
	}{
		{"all cached", 1 << 30, 6},
		{"cache of 32 MiB", 32 << 20, 12},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestDocCacheMemory$", "-test.v")
		cmd.Env = append(os.Environ(), "FERRY_DOCCACHE_CHILD=1",
			fmt.Sprint("FERRY_DOCCACHE_BYTES=", tc.cache), fmt.Sprint("FERRY_DOCCACHE_RECORDS=", tc.records))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", tc.name, err, out)
		}
		i := bytes.Index(out, []byte("doccache:"))
		if i < 0 {
			t.Fatalf("%s: no measurement in\n%s", tc.name, out)
		}
		var grown, accounted, old int64
		if _, err := fmt.Sscanf(string(out[i:]), "doccache: grown %d accounted %d stored-size estimate %d", &grown, &accounted, &old); err != nil {
			t.Fatalf("%s: %v in %q", tc.name, err, out[i:])
		}
		t.Logf("%s: %d object-heavy records pushed: resident memory grew %.1f MiB; the cache accounts %.1f MiB (by stored size it would be %.1f MiB)",
			tc.name, tc.records, mib(grown), mib(accounted), mib(old))
		if tc.cache > 1<<29 {
			if accounted < grown/2 || accounted > 2*grown {
				t.Errorf("%s: the cache accounts %.1f MiB, the process grew %.1f MiB", tc.name, mib(accounted), mib(grown))
			}
		} else if grown > 2*tc.cache {
			t.Errorf("%s: the process grew %.1f MiB, over twice the cache's %.1f MiB", tc.name, mib(grown), mib(tc.cache))
		}
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// docCacheChild is TestDocCacheMemory's relay process.
func docCacheChild(t *testing.T) {
	cache, _ := strconv.ParseInt(os.Getenv("FERRY_DOCCACHE_BYTES"), 10, 64)
	n, _ := strconv.Atoi(os.Getenv("FERRY_DOCCACHE_RECORDS"))
	tr := newTestRelay(t, NewMemStore(), func(o *Options) { o.DocCacheBytes = cache })
	a := tr.client("shop")
	recs := make([][]byte, n)
	var stored int64
	for i := range recs {
		recs[i] = objectHeavyRecord(t, fmt.Sprintf("%04x", 0x100+i))
		stored += int64(len(recs[i]))
	}
	runtime.GC()
	before := residentBytes(t)
	for i, data := range recs {
		mustCall[transport.Ack](t, a, pushOf("c", 0, rec(fmt.Sprint("r", i), data)))
	}
	runtime.GC()
	grown := residentBytes(t) - before
	// What the cache would have counted by stored size, as it did before
	// it counted operations: 8 KiB plus 64 times the stored bytes each.
	old := int64(n)*8<<10 + 64*stored
	fmt.Printf("doccache: grown %d accounted %d stored-size estimate %d\n", grown, tr.srv.docs.Size(), old)
}

// residentBytes returns the process's resident memory.
func residentBytes(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
}

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
	if h, _ := tr.store.Head(context.Background(), Coll{"shop", "todos"}); h != 0 {
		t.Fatalf("log head %d after a refused message", h)
	}
	return m.Message, ms.TotalAlloc - before
}

// TestAutomergeDocumentInflationBudgeted: a version 2 sync message of a
// few kilobytes holding a saved document whose columns inflate to 8 MiB
// is refused within max_inflated (1 MiB), before the document is loaded.
func TestAutomergeDocumentInflationBudgeted(t *testing.T) {
	tr := newTestRelay(t, NewMemStore(), nil)
	ed := newEditor(t, "dd01")
	ed.edit(map[string]any{"blob": strings.Repeat("x", 8<<20)})
	saved := ed.doc.Save()
	heads := ed.doc.Heads()
	ed.doc.Free()
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
	tr := newTestRelay(t, NewMemStore(), nil)
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
	tr := newTestRelay(t, NewMemStore(), func(o *Options) { o.Limits.MaxRecordOps = maxOps })
	ed := newEditor(t, "dd02")
	vals := make([]any, 3*maxOps)
	for i := range vals {
		vals[i] = int64(7)
	}
	ed.edit(map[string]any{"list": vals})
	saved := ed.doc.Save()
	heads := ed.doc.Heads()
	ed.doc.Free()
	msg, _ := amRefused(t, tr, heads, saved)
	if !strings.Contains(msg, "too_large") || !strings.Contains(msg, "max_record_ops") || !strings.Contains(msg, "whole document of 30001 operations") {
		t.Fatalf("a document of %d operations in %d bytes answered %q", 3*maxOps+1, len(saved), msg)
	}
}
