//go:build unix

package replica

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// A child process writes records of max_record size with indexes over
// their large fields, with memtables small enough that their values go to
// the value log; the parent kills it with SIGKILL while it writes, reopens
// the store and checks that every record is one whole version (the last
// acknowledged one, or the one in flight): its document, read model and
// index entries all of that version.

const (
	maxCrashEnvDir = "FERRY_MAXREC_CRASH_DIR" // set only in the child process
	maxCrashMT     = 8 << 20
)

// maxCrashRec is record id at version v, the same in both processes: its
// body and note are those it was created with (version 1), its tag says
// the version.
func maxCrashRec(id string, v int) maxRec {
	h := uint64(0)
	for _, c := range id {
		h = h*31 + uint64(c)
	}
	m := newMaxRec(rand.New(rand.NewPCG(h, 11)), "")
	m.Tag = fmt.Sprintf("%s-%d", id, v)
	return m
}

// maxCrashVersions returns the version of each record r holds.
func maxCrashVersions(t *testing.T, r *Replica) map[string]int {
	out := map[string]int{}
	for rec, err := range r.Collection("c").Scan(ScanOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		tag, _ := rec.Fields["tag"].(string)
		_, v, _ := strings.Cut(tag, "-")
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("%s: tag %q", rec.ID, tag)
		}
		out[rec.ID] = n
	}
	return out
}

// TestMaxRecordCrashChild is the child: it creates records of max_record
// size and edits a small field of those there (which rewrites their read
// models), in turn, and reports each write that returned ("ok <id>
// <version>").
func TestMaxRecordCrashChild(t *testing.T) {
	dir := os.Getenv(maxCrashEnvDir)
	if dir == "" {
		t.Skip("only run by TestMaxRecordCrash")
	}
	r, err := Open(dir, &Options{memTableSize: maxCrashMT})
	if err != nil {
		t.Fatal(err)
	}
	maxIndexes(t, r)
	c := r.Collection("c")
	next := maxCrashVersions(t, r)
	for i := 0; ; i++ {
		var id string
		if i%2 == 0 {
			id = fmt.Sprintf("r%03d", len(next))
			if err := c.Put(id, maxCrashRec(id, 1)); err != nil {
				t.Fatal(err)
			}
			next[id] = 1
		} else {
			id = fmt.Sprintf("r%03d", i%len(next))
			next[id]++
			tag := maxCrashRec(id, next[id]).Tag
			if err := c.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"tag"}, tag) }); err != nil {
				t.Fatal(err)
			}
		}
		fmt.Printf("ok %s %d\n", id, next[id])
	}
}

func TestMaxRecordCrash(t *testing.T) {
	if os.Getenv(maxCrashEnvDir) != "" {
		t.Skip("inside the child")
	}
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	dir := t.TempDir()
	acked := map[string]int{}
	for round := 0; round < 4; round++ {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestMaxRecordCrashChild$", "-test.count=1", "-test.timeout=3m")
		cmd.Env = append(os.Environ(), maxCrashEnvDir+"="+dir)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		kill := 1 + rng.IntN(6) // writes acknowledged before the kill
		lag := rng.IntN(40)     // milliseconds into a later write
		br := bufio.NewReader(out)
		oks := 0
		var other strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				break
			}
			var id string
			var v int
			if _, err := fmt.Sscanf(line, "ok %s %d", &id, &v); err != nil {
				other.WriteString(line)
				continue
			}
			acked[id] = v
			if oks++; oks == kill {
				time.AfterFunc(time.Duration(lag)*time.Millisecond, func() { cmd.Process.Kill() })
			}
		}
		cmd.Wait()
		cancel()
		if oks < kill {
			t.Fatalf("round %d: the child stopped after %d writes: %s%s", round, oks, other.String(), stderr.String())
		}
		maxCrashVerify(t, dir, round, acked)
	}
}

// maxCrashVerify reopens the store and checks each record: at the version
// acknowledged last or, for one record at most (the write in flight), the
// next one (a new record: version 1); its read model, document and index
// entries all of that version. Then it writes to the store.
func maxCrashVerify(t *testing.T, dir string, round int, acked map[string]int) {
	t.Helper()
	r, err := Open(dir, &Options{memTableSize: maxCrashMT})
	if err != nil {
		t.Fatalf("round %d: reopen after the kill: %v", round, err)
	}
	defer r.Close()
	c := r.Collection("c")
	got := maxCrashVersions(t, r)
	landed := 0
	for id, v := range acked {
		if _, ok := got[id]; !ok {
			t.Fatalf("round %d: %s (acknowledged at version %d) is missing", round, id, v)
		}
	}
	for id, v := range got {
		switch {
		case v == acked[id]:
		case v == acked[id]+1:
			landed++
		default:
			t.Fatalf("round %d: %s at version %d, acknowledged %d", round, id, v, acked[id])
		}
		acked[id] = v
		want := maxCrashRec(id, v)
		checkMaxRec(t, r, id, want)
		// The document says what the read model says.
		var fromDoc maxRec
		err := r.db.View(func(txn *badger.Txn) error {
			d, _, ok, err := r.loadDocTxn(txn, "c", id, false)
			if err != nil || !ok {
				return fmt.Errorf("document of %s: %v (found %v)", id, err, ok)
			}
			return d.Decode(&fromDoc)
		})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if !bytes.Equal(fromDoc.Body, want.Body) || fromDoc.Tag != want.Tag || fromDoc.Note != want.Note {
			t.Fatalf("round %d: %s: the document holds version %q, its read model %q", round, id, fromDoc.Tag, want.Tag)
		}
	}
	if landed > 1 {
		t.Fatalf("round %d: %d writes landed beyond those acknowledged", round, landed)
	}
	// One entry per record and index: none left of an older version.
	for _, name := range []string{"body", "tag_body", "note", "note_tag", "tag"} {
		if n := countKeys(t, r, indexPrefix("c", name)); n != len(got) {
			t.Fatalf("round %d: index %s has %d entries for %d records", round, name, n, len(got))
		}
	}
	// The store takes writes again.
	id := fmt.Sprintf("r%03d", 0)
	if _, ok := acked[id]; ok {
		acked[id]++
		tag := maxCrashRec(id, acked[id]).Tag
		if err := c.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"tag"}, tag) }); err != nil {
			t.Fatalf("round %d: a write after reopening: %v", round, err)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}
