package replica

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
)

// The largest record the relay takes (its max_record, 1 MiB by default),
// with several indexes over its large fields, on devices whose memtables
// make Badger's limit on one transaction (15% of one) smaller than what
// the record writes: its change, its read model, and its index entries.

// maxRec is a record of max_record size: a body of random bytes (which
// Automerge cannot compress), a note of random letters and a small tag.
type maxRec struct {
	Body []byte `ferry:"body"`
	Note string `ferry:"note"`
	Tag  string `ferry:"tag"`
}

func newMaxRec(rng *rand.Rand, tag string) maxRec {
	body := make([]byte, 990_000)
	for i := range body {
		body[i] = byte(rng.Uint32())
	}
	note := make([]byte, 20_000)
	for i := range note {
		note[i] = 'a' + byte(rng.IntN(26))
	}
	return maxRec{Body: body, Note: string(note), Tag: tag}
}

// maxIndexes declares indexes over the record's large fields.
func maxIndexes(t *testing.T, r *Replica) {
	t.Helper()
	c := r.Collection("c")
	for name, f := range map[string][]string{
		"body": {"body"}, "tag_body": {"tag", "body"}, "note": {"note"}, "note_tag": {"note", "tag"}, "tag": {"tag"},
	} {
		if err := c.EnsureIndex(name, IndexOptions{Fields: f}); err != nil {
			t.Fatal(err)
		}
	}
}

// diskDevice opens a replica in a folder of its own, with memtables of mt
// bytes, a manual profile "p" and, with live, a live one "live".
func (e *syncEnv) diskDevice(o *Options, mt int64, live bool) *Replica {
	e.t.Helper()
	opts := Options{}
	if o != nil {
		opts = *o
	}
	opts.memTableSize = mt
	if opts.TokenSource == nil {
		opts.TokenSource = StaticToken(e.token)
	}
	r := open(e.t, e.t.TempDir(), &opts)
	if err := r.AddProfile(e.profile("p")); err != nil {
		e.t.Fatal(err)
	}
	if live {
		p := e.profile("live")
		p.Mode = policy.Live
		if err := r.AddProfile(p); err != nil {
			e.t.Fatal(err)
		}
	}
	return r
}

// checkMaxRec checks that r holds want as id, by read and by index.
func checkMaxRec(t *testing.T, r *Replica, id string, want maxRec) {
	t.Helper()
	c := r.Collection("c")
	var got maxRec
	if err := c.Get(id, &got); err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	if !bytes.Equal(got.Body, want.Body) || got.Note != want.Note || got.Tag != want.Tag {
		t.Fatalf("%s: tag %q, body of %d bytes, note of %d: not as written", id, got.Tag, len(got.Body), len(got.Note))
	}
	for _, q := range []Query[map[string]any]{
		{Index: "body", Eq: []any{want.Body}},
		{Index: "tag_body", Eq: []any{want.Tag, want.Body}},
		{Index: "note", Eq: []any{want.Note}},
		{Index: "note_tag", Eq: []any{want.Note, want.Tag}},
		{Index: "tag", Eq: []any{want.Tag}},
	} {
		wantIDs(t, "index "+q.Index, selectIDs(t, c, q), id)
	}
}

// waitTag waits until r's record id has the tag.
func waitTag(t *testing.T, r *Replica, id, tag string) {
	t.Helper()
	c := r.Collection("c")
	f := c.Watch(64)
	defer f.Close()
	deadline := time.After(60 * time.Second)
	for {
		var m maxRec
		err := c.Get(id, &m)
		if err == nil && m.Tag == tag {
			return
		}
		select {
		case _, ok := <-f.C:
			if !ok {
				t.Fatalf("feed closed: %v", f.Err())
			}
		case <-deadline:
			st, _ := r.Status("live")
			t.Fatalf("%s: tag %q, %v after 60s, want %q (live: %+v)", id, m.Tag, err, tag, st)
		}
	}
}

func TestMaxRecordFitsOneTransaction(t *testing.T) {
	for _, mt := range []int64{4 << 20, 8 << 20, 16 << 20} {
		t.Run(fmt.Sprintf("memtable=%dMiB", mt>>20), func(t *testing.T) {
			t.Parallel() // each size has its own relay and stores
			rng := rand.New(rand.NewPCG(uint64(mt), 7))
			e := newSyncEnv(t)
			a, b := e.diskDevice(nil, mt, false), e.diskDevice(nil, mt, false)
			opts, isLive := liveOptions(e)
			l := e.diskDevice(opts, mt, true)
			for _, r := range []*Replica{a, b, l} {
				maxIndexes(t, r)
			}
			select {
			case <-isLive:
			case <-time.After(30 * time.Second):
				t.Fatal("the live device did not go live")
			}
			// A local write, a pull and a live apply of a new record.
			one := newMaxRec(rng, "t1")
			if err := a.Collection("c").Put("big", one); err != nil {
				t.Fatalf("local write of a record of max_record size: %v", err)
			}
			checkMaxRec(t, a, "big", one)
			mustSync(t, a, "p")
			mustSync(t, b, "p")
			checkMaxRec(t, b, "big", one)
			waitTag(t, l, "big", "t1")
			checkMaxRec(t, l, "big", one)
			// An edit of a small field rewrites the read model whole.
			if err := a.Collection("c").Update("big", func(d *crdt.Doc) error { return d.Set(crdt.Path{"tag"}, "t2") }); err != nil {
				t.Fatalf("local edit: %v", err)
			}
			one.Tag = "t2"
			two := newMaxRec(rng, "u1")
			if err := a.Collection("c").Put("big2", two); err != nil {
				t.Fatal(err)
			}
			mustSync(t, a, "p")
			waitTag(t, l, "big", "t2")
			waitTag(t, l, "big2", "u1")
			checkMaxRec(t, l, "big", one)
			checkMaxRec(t, l, "big2", two)
			// A refresh from the relay rewrites every record.
			refreshSync(t, b, "p")
			checkMaxRec(t, b, "big", one)
			checkMaxRec(t, b, "big2", two)
		})
	}
}

// vlogBytes sums the sizes of the value log files in dir.
func vlogBytes(t *testing.T, dir string) int64 {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.vlog"))
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

// rewriteReadModels writes rec as record c/big in the store in dir, and
// edits a small field of it 8 times in each of 6 opens with opts (without
// the value-log GC), so that its read model, past the value threshold,
// fills the value log with versions the GC may reclaim. It returns the
// number of edits (the last tag is v<edits>).
func rewriteReadModels(t *testing.T, dir string, opts *Options, rec maxRec) int {
	t.Helper()
	edits := 0
	for run := 0; run < 6; run++ {
		r := open(t, dir, opts)
		c := r.Collection("c")
		if run == 0 {
			if err := c.Put("big", rec); err != nil {
				t.Fatal(err)
			}
		}
		for i := 0; i < 8; i++ {
			edits++
			if err := c.Update("big", func(d *crdt.Doc) error { return d.Set(crdt.Path{"tag"}, fmt.Sprintf("v%d", edits)) }); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if n := vlogBytes(t, dir); n < int64(edits*len(rec.Body))*3/4 {
		t.Fatalf("the value log holds %d bytes after %d rewrites of a read model of %d bytes", n, edits, len(rec.Body))
	}
	return edits
}

// A record's read model past the value threshold is rewritten whole into
// the value log on every change: the value-log GC (run in the background
// every Options.GCInterval) reclaims what its older versions took, once
// Badger's compactions have dropped them (here: six opens, each leaving
// a table of the store's index and a value log of its own, are compacted
// together).
func TestValueLogGCReclaimsRewrittenReadModels(t *testing.T) {
	dir := t.TempDir()
	opts := &Options{memTableSize: 4 << 20, GCInterval: -1}
	rec := newMaxRec(rand.New(rand.NewPCG(1, 2)), "v0")
	edits := rewriteReadModels(t, dir, opts, rec)
	before := vlogBytes(t, dir)
	r := open(t, dir, opts)
	if err := r.db.Flatten(1); err != nil {
		t.Fatal(err)
	}
	runs := 0
	for r.db.RunValueLogGC(0.5) == nil {
		runs++
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	after := vlogBytes(t, dir)
	t.Logf("value log: %d bytes before, %d after %d GC runs", before, after, runs)
	if after > before/4 {
		t.Fatalf("value log: %d bytes before the GC, %d after (%d runs)", before, after, runs)
	}
	r = open(t, dir, opts)
	var got maxRec
	if err := r.Collection("c").Get("big", &got); err != nil || !bytes.Equal(got.Body, rec.Body) || got.Tag != fmt.Sprintf("v%d", edits) {
		t.Fatalf("after the GC: %v, tag %q, body of %d bytes", err, got.Tag, len(got.Body))
	}
}
