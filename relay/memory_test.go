package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

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
