package replica

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// bigRecords puts n records into coll on r, each with a field of size
// bytes that compresses well: its stored document is small, its read
// model (the field's value) is not.
func bigRecords(t *testing.T, r *Replica, coll string, n, size int, tag string) {
	t.Helper()
	c := r.Collection(coll)
	for i := 0; i < n; i++ {
		v := map[string]any{
			"body": strings.Repeat(tag, size/len(tag)),
			"a":    fmt.Sprintf("%s-a-%03d", tag, i),
			"b":    i,
		}
		if err := c.Put(fmt.Sprintf("r%03d", i), v); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
}

func TestTxnSplitFreshPullOfLargeReadModels(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	bigRecords(t, a, "c", 40, 200<<10, "x")
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	for i := 0; i < 40; i++ {
		m := getFields(t, b, "c", fmt.Sprintf("r%03d", i))
		if len(m["body"].(string)) != 200<<10 {
			t.Fatalf("r%03d has a body of %d bytes", i, len(m["body"].(string)))
		}
	}
}

// editAll changes a small field of each of n records, one write each.
func editAll(t *testing.T, r *Replica, coll string, n int) {
	t.Helper()
	c := r.Collection(coll)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("r%03d", i)
		if err := c.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"b"}, 1000+i) }); err != nil {
			t.Fatalf("update %s: %v", id, err)
		}
	}
}

// checkAll checks that b holds n records whose small field is b0+i.
func checkAll(t *testing.T, r *Replica, coll string, n, b0 int) {
	t.Helper()
	for i := 0; i < n; i++ {
		m := getFields(t, r, coll, fmt.Sprintf("r%03d", i))
		if fmt.Sprint(m["b"]) != fmt.Sprint(b0+i) || len(m["body"].(string)) != 200<<10 {
			t.Fatalf("r%03d: b=%v, body of %d bytes", i, m["b"], len(m["body"].(string)))
		}
	}
}

// A small edit to each of many large records rewrites each record's read
// model whole: a pulled page of them writes far more than it carries.
func TestTxnSplitIncrementalPullOfLargeRecords(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	const n = 30
	bigRecords(t, a, "c", n, 200<<10, "x")
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	editAll(t, a, "c", n)
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	checkAll(t, b, "c", n, 1000)
}

// indexBig declares indexes that each hold the large field: every record
// written adds an index key as large as the field, per index.
func indexBig(t *testing.T, r *Replica, coll string) {
	t.Helper()
	c := r.Collection(coll)
	for name, fields := range map[string][]string{
		"body": {"body"}, "body_a": {"body", "a"}, "a_body": {"a", "body"}, "b_body": {"b", "body"},
	} {
		if err := c.EnsureIndex(name, IndexOptions{Fields: fields}); err != nil {
			t.Fatal(err)
		}
	}
}

// checkSmall checks that r holds n records of bigRecords(size) whose
// small field is b0+i, by read and by index.
func checkSmall(t *testing.T, r *Replica, coll string, n, size, b0 int) {
	t.Helper()
	for i := 0; i < n; i++ {
		m := getFields(t, r, coll, fmt.Sprintf("r%03d", i))
		if fmt.Sprint(m["b"]) != fmt.Sprint(b0+i) || len(m["body"].(string)) != size {
			t.Fatalf("r%03d: b=%v, body of %d bytes", i, m["b"], len(m["body"].(string)))
		}
	}
}

func TestTxnSplitFreshPullWithIndexes(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	const n, size = 60, 20 << 10
	bigRecords(t, a, "c", n, size, "y")
	mustSync(t, a, "p")
	indexBig(t, b, "c")
	mustSync(t, b, "p")
	checkSmall(t, b, "c", n, size, 0)
}

func TestTxnSplitRefreshFromServerWithIndexes(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	const n, size = 60, 20 << 10
	bigRecords(t, a, "c", n, size, "y")
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	indexBig(t, b, "c")
	refreshSync(t, b, "p")
	checkSmall(t, b, "c", n, size, 0)
}

// A sync whose second transaction fails leaves the first one's records
// applied, and the next sync completes from there: nothing is skipped.
func TestTxnSplitCrashBetweenParts(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	const n = 30
	bigRecords(t, a, "c", n, 200<<10, "x")
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	editAll(t, a, "c", n)
	mustSync(t, a, "p")

	errCrash := errors.New("crash between parts")
	var parts atomic.Int32
	fault := func(lo, hi int, last bool) error {
		if lo > 0 && parts.Add(1) == 1 {
			return errCrash
		}
		return nil
	}
	partFault.Store(&fault)
	_, err := b.Sync(context.Background(), "p")
	partFault.Store(nil)
	if !errors.Is(err, errCrash) {
		t.Fatalf("sync with its second part failing: %v", err)
	}
	// Each record is whole: old or new, never between.
	applied := 0
	for i := 0; i < n; i++ {
		m := getFields(t, b, "c", fmt.Sprintf("r%03d", i))
		switch fmt.Sprint(m["b"]) {
		case fmt.Sprint(1000 + i):
			applied++
		case fmt.Sprint(i):
		default:
			t.Fatalf("r%03d: b=%v", i, m["b"])
		}
	}
	if applied == 0 || applied == n {
		t.Fatalf("%d of %d records applied before the failed part: want some, not all", applied, n)
	}
	mustSync(t, b, "p")
	checkAll(t, b, "c", n, 1000)
	if n, _ := b.Collection("c").PendingCount(); n != 0 {
		t.Fatalf("%d records pending on b", n)
	}
}

// A unit of work too large for one transaction is refused whole, with
// ErrTooLarge.
func TestTxnSplitUnitOfWorkTooLarge(t *testing.T) {
	e := newSyncEnv(t)
	a := e.device(nil)
	body := strings.Repeat("z", 200<<10)
	err := a.Write(func(tx *Tx) error {
		for i := 0; i < 30; i++ {
			if err := tx.Put("c", fmt.Sprintf("r%03d", i), map[string]any{"body": body}); err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a unit of work of 30 records of 200 KiB: %v", err)
	}
	for i := 0; i < 30; i++ {
		var m map[string]any
		if err := a.Collection("c").Get(fmt.Sprintf("r%03d", i), &m); !errors.Is(err, ErrNotFound) {
			t.Fatalf("r%03d after the refused unit of work: %v", i, err)
		}
	}
}

// A live device applies a group of edits to many large records.
func TestTxnSplitLiveApplyOfLargeRecords(t *testing.T) {
	e := newSyncEnv(t)
	a := e.device(nil)
	const n = 30
	opts, live := liveOptions(e)
	b := e.liveDevice(opts)
	select {
	case <-live:
	case <-time.After(30 * time.Second):
		t.Fatal("b did not go live")
	}
	bigRecords(t, a, "c", n, 200<<10, "x")
	mustSync(t, a, "p")
	waitAll(t, b, n, 0)
	editAll(t, a, "c", n)
	mustSync(t, a, "p")
	waitAll(t, b, n, 1000)
}

// waitAll waits until r's records r000... hold b = b0+i.
func waitAll(t *testing.T, r *Replica, n, b0 int) {
	t.Helper()
	// Watched before the first look: a record applied after it is an event.
	f := r.Collection("c").Watch(4 * n)
	defer f.Close()
	deadline := time.After(30 * time.Second)
	for i := 0; i < n; {
		var m map[string]any
		err := r.Collection("c").Get(fmt.Sprintf("r%03d", i), &m)
		if err == nil && fmt.Sprint(m["b"]) == fmt.Sprint(b0+i) {
			i++
			continue
		}
		select {
		case _, ok := <-f.C:
			if !ok {
				t.Fatalf("feed closed: %v", f.Err())
			}
		case <-deadline:
			st, _ := r.Status("live")
			t.Fatalf("r%03d: %v, %v after 30s (live: %+v)", i, m["b"], err, st)
		}
	}
}

// Building an index over large values writes a key per record as large as
// its value.
func TestTxnSplitIndexBuildOfLargeValues(t *testing.T) {
	e := newSyncEnv(t)
	a := e.device(nil)
	const n, size = 80, 60 << 10
	bigRecords(t, a, "c", n, size, "w")
	c := a.Collection("c")
	last := 0
	if err := c.EnsureIndex("body", IndexOptions{Fields: []string{"body", "a"}, Progress: func(done int) { last = done }}); err != nil {
		t.Fatal(err)
	}
	if last != n {
		t.Fatalf("the build went through %d records, want %d", last, n)
	}
}

// Conflicting edits of many large records on both sides: the policy's
// resolutions are written for all of them.
func TestTxnSplitConflictsOfLargeRecords(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	const n = 30
	bigRecords(t, a, "c", n, 200<<10, "x")
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	editAll(t, a, "c", n)
	mustSync(t, a, "p")
	cb := b.Collection("c")
	for i := 0; i < n; i++ {
		if err := cb.Update(fmt.Sprintf("r%03d", i), func(d *crdt.Doc) error { return d.Set(crdt.Path{"b"}, 2000+i) }); err != nil {
			t.Fatal(err)
		}
	}
	st := mustSync(t, b, "p")
	if c := stat(st, "c"); c.Conflicts != n {
		t.Fatalf("b's sync: %d conflicts, want %d", c.Conflicts, n)
	}
	mustSync(t, a, "p")
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("r%03d", i)
		if x, y := getFields(t, a, "c", id)["b"], getFields(t, b, "c", id)["b"]; fmt.Sprint(x) != fmt.Sprint(y) {
			t.Fatalf("%s: a has b=%v, b has %v", id, x, y)
		}
	}
}

// A record whose own writes pass the limit fails the sync with
// ErrTooLarge naming it, not a bare ErrTxnTooBig: here, with thousands
// of indexes over a long value, each entry holding 1 KiB of it.
func TestTxnSplitRecordAloneTooLarge(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	bigRecords(t, a, "c", 3, 50<<10, "v")
	mustSync(t, a, "p")
	cb := b.Collection("c")
	for i := 0; i < 2500; i++ {
		if err := cb.EnsureIndex(fmt.Sprintf("i%04d", i), IndexOptions{Fields: []string{"body", fmt.Sprintf("f%04d", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := b.Sync(context.Background(), "p")
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "c/r000") {
		t.Fatalf("b's sync: %v, want ErrTooLarge naming c/r000", err)
	}
	t.Log(err)
}

// Dropping an index over large values deletes keys as large as them.
func TestTxnSplitDropIndexOfLargeValues(t *testing.T) {
	e := newSyncEnv(t)
	a := e.device(nil)
	const n, size = 80, 60 << 10
	bigRecords(t, a, "c", n, size, "w")
	c := a.Collection("c")
	if err := c.EnsureIndex("body", IndexOptions{Fields: []string{"body", "a"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.DropIndex("body"); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Indexes()["body"]; ok {
		t.Fatal("the index is still declared")
	}
}
