package replica

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// diskDevice opens a replica in a folder of its own, with default
// options but for the token, the profile "p" and Relaxed: on disk, Badger counts a
// value at or past its value threshold as a pointer against a
// transaction, in memory it counts every value in full.
func (e *syncEnv) diskDevice() *Replica {
	e.t.Helper()
	r := open(e.t, e.t.TempDir(), &Options{TokenSource: StaticToken(e.token), Relaxed: true})
	if err := r.AddProfile(e.profile("p")); err != nil {
		e.t.Fatal(err)
	}
	return r
}

// readModelSize is the stored size of a record's read model.
func readModelSize(t *testing.T, r *Replica, coll, id string) int {
	t.Helper()
	n := 0
	err := r.db.View(func(txn *badger.Txn) error {
		v, ok, err := getKey(txn, recKey('v', coll, id))
		if !ok && err == nil {
			err = fmt.Errorf("no read model")
		}
		n = len(v)
		return err
	})
	if err != nil {
		t.Fatalf("read model of %s/%s: %v", coll, id, err)
	}
	return n
}

// largeRecord writes record id with a read model of about view bytes and
// a saved document of about doc bytes (doc at least three quarters of
// view: noise takes that much saved), both a little under the sizes
// asked, and returns its fields. Its document grows past its read model
// with a field written and removed again, which its history keeps.
func largeRecord(t *testing.T, r *Replica, coll, id string, view, doc int) map[string]any {
	t.Helper()
	const margin = 32 << 10
	c := r.Collection(coll)
	fields := map[string]any{"k": id, "tag": strings.Repeat("t", 1<<10)}
	put := func() {
		t.Helper()
		if err := c.Put(id, fields); err != nil {
			t.Fatalf("put %s: %v", id, err)
		}
	}
	put()
	for i := 0; ; i++ {
		need := view - margin - readModelSize(t, r, coll, id)
		if need <= 0 {
			break
		}
		fields[fmt.Sprintf("f%03d", i)] = noise(need)
		put()
	}
	for {
		need := doc - margin - savedSize(t, r, coll, id)
		if need <= 0 {
			break
		}
		// Noise saves at about three quarters of its length.
		if err := c.Put(id, map[string]any{"gone": noise(need)}); err != nil {
			t.Fatal(err)
		}
		if err := c.Update(id, func(d *crdt.Doc) error { return d.Delete(crdt.Path{"gone"}) }); err != nil {
			t.Fatal(err)
		}
	}
	if v, d := readModelSize(t, r, coll, id), savedSize(t, r, coll, id); v >= view || d >= doc {
		t.Fatalf("%s: a read model of %d bytes and a document of %d, want them under %d and %d", id, v, d, view, doc)
	}
	return fields
}

// A record whose document and read model are each as large as Badger
// keeps in its tables (just under the value threshold), or as large as
// max_record allows, is written, pulled whole by a new device, and its
// edits pulled, each in one transaction, with two indexes on it.
func TestLargestRecordFitsOneTransaction(t *testing.T) {
	sizes := []struct {
		name      string
		view, doc int
	}{
		{"under the value threshold", valueThreshold, valueThreshold},
		{"at max_record", transport.DefaultMaxRecord, transport.DefaultMaxRecord},
	}
	e := newSyncEnv(t)
	a, b := e.diskDevice(), e.diskDevice()
	for _, r := range []*Replica{a, b} {
		c := r.Collection("c")
		if err := c.EnsureIndex("k", IndexOptions{Fields: []string{"k"}}); err != nil {
			t.Fatal(err)
		}
		if err := c.EnsureIndex("tag", IndexOptions{Fields: []string{"tag", "k"}}); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]map[string]any{}
	for i, s := range sizes {
		id := fmt.Sprintf("big%d", i)
		want[id] = largeRecord(t, a, "c", id, s.view, s.doc)
		t.Logf("%s: a read model of %d bytes, a document of %d", s.name, readModelSize(t, a, "c", id), savedSize(t, a, "c", id))
	}
	check := func(when string) {
		t.Helper()
		for id, fields := range want {
			got := getFields(t, b, "c", id)
			if len(got) != len(fields) || got["f000"] != fields["f000"] || got["k"] != id {
				t.Fatalf("%s: b has %d fields of %s's %d", when, len(got), id, len(fields))
			}
		}
	}
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	check("fresh pull")
	for id, fields := range want {
		fields["f000"] = noise(1 << 10)
		if err := a.Collection("c").Put(id, fields); err != nil {
			t.Fatalf("edit %s: %v", id, err)
		}
	}
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	check("pull of an edit")
}

// A store whose memtable logs were written with larger memtables than
// today's (by an older Ferry, stopped without closing the store) opens,
// with everything written to those logs.
func TestOpenAfterLargerMemtables(t *testing.T) {
	if dir := os.Getenv(envLargeMemChild); dir != "" {
		largeMemChild(t, dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestOpenAfterLargerMemtables$", "-test.count=1")
	cmd.Env = append(os.Environ(), envLargeMemChild+"="+dir)
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != largeMemExit {
		t.Fatalf("child exited with %d (%v): %s", code, err, out)
	}
	mems, _ := filepath.Glob(filepath.Join(dir, "*.mem"))
	var largest int64
	for _, m := range mems {
		if st, err := os.Stat(m); err == nil {
			largest = max(largest, st.Size())
		}
	}
	if largest <= 2*memTableSize {
		t.Fatalf("the child left memtable logs of at most %d bytes (%d logs), want one for a memtable larger than %d", largest, len(mems), memTableSize)
	}
	r := open(t, dir, nil)
	c := r.Collection("c")
	for i, want := range largeMemRecords() {
		var got map[string]any
		if err := c.Get(fmt.Sprintf("r%02d", i), &got); err != nil || got["body"] != want {
			t.Fatalf("r%02d after reopening: %d bytes, %v", i, len(fmt.Sprint(got["body"])), err)
		}
	}
}

const (
	envLargeMemChild = "FERRY_TEST_LARGE_MEMTABLE_DIR"
	largeMemExit     = 7
)

// largeMemRecords are the bodies of 12 MiB of records, each under the
// value threshold, which a 32 MiB memtable keeps in its log.
func largeMemRecords() []string {
	var bodies []string
	for i := range 96 {
		bodies = append(bodies, strings.Repeat(string(rune('a'+i%26)), 128<<10)+fmt.Sprint(i))
	}
	return bodies
}

// largeMemChild is TestOpenAfterLargerMemtables' process: it writes
// largeMemRecords, each durable, to the store in dir with 32 MiB
// memtables and exits without closing it.
func largeMemChild(t *testing.T, dir string) {
	r, err := Open(dir, &Options{memTableSize: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c := r.Collection("c")
	for i, body := range largeMemRecords() {
		if err := c.Put(fmt.Sprintf("r%02d", i), map[string]any{"body": body}); err != nil {
			t.Fatal(err)
		}
	}
	os.Exit(largeMemExit)
}

// What a record's large read model leaves in the value log each time it
// is rewritten is reclaimed by the replica's value-log GC: the value log
// turns to a new file every valueLogFileSize bytes, and a file mostly
// garbage is rewritten and removed.
func TestValueLogGCReclaimsRewrittenValues(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, &Options{Relaxed: true, GCInterval: -1}).Collection("c")
	body := noise(valueThreshold + 64<<10)
	if err := c.Put("big", map[string]any{"body": body, "n": 0}); err != nil {
		t.Fatal(err)
	}
	// Each edit of n rewrites the read model whole, into the value log.
	edits := 2*valueLogFileSize/(valueThreshold+64<<10) + 1
	for i := 1; i <= edits; i++ {
		if err := c.Update("big", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, i) }); err != nil {
			t.Fatal(err)
		}
	}
	c.r.Close()
	logs, _ := filepath.Glob(filepath.Join(dir, "*.vlog"))
	if len(logs) < 3 {
		t.Fatalf("%d value-log files after %d rewrites of %d bytes, want 3 or more", len(logs), edits, len(body))
	}
	first := logs[0]

	gc := make(chan struct{})
	var once sync.Once
	r := open(t, dir, &Options{Relaxed: true, GCInterval: time.Millisecond,
		Logger: slog.New(onMessage{msg: "value log GC", once: &once, f: func() { close(gc) }})})
	// The GC picks files by what compactions found dropped: records
	// under the value threshold fill memtables until level 0 is
	// compacted, the old read models' versions with it.
	for i := range 4 * 5 * memTableSize / (valueThreshold / 2) {
		select {
		case <-gc:
		default:
			if err := r.Collection("c").Put(fmt.Sprintf("fill%03d", i), map[string]any{"v": noise(valueThreshold / 4)}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		break
	}
	select {
	case <-gc:
	case <-time.After(time.Minute):
		t.Fatal("no value-log file rewritten within a minute")
	}
	var got map[string]any
	if err := r.Collection("c").Get("big", &got); err != nil || got["body"] != body || fmt.Sprint(got["n"]) != fmt.Sprint(edits) {
		t.Fatalf("the record after GC: n=%v, %d bytes of body, %v", got["n"], len(fmt.Sprint(got["body"])), err)
	}
	r.Close()
	if _, err := os.Stat(first); !os.IsNotExist(err) {
		t.Fatalf("the first value-log file, all garbage, is still there (%v)", err)
	}
}
