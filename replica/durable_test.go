package replica

import (
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/badgerdir"
)

func syncsOf(r *Replica) int64 { return r.fsync.Syncs() }

// TestLocalWritesSync: a local write costs one sync, durable; none when
// relaxed, or in memory.
func TestLocalWritesSync(t *testing.T) {
	for _, c := range []struct {
		name  string
		o     *Options
		dir   bool
		syncs int64
	}{
		{"durable", nil, true, 1},
		{"relaxed", &Options{Relaxed: true}, true, 0},
		{"in memory", &Options{InMemory: true}, false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := ""
			if c.dir {
				dir = t.TempDir()
			}
			r := open(t, dir, c.o)
			col := coll(t, r, "c")
			for i, write := range []func() error{
				func() error { return col.Put("x", map[string]any{"n": 1}) },
				func() error { return col.Update("x", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, 2) }) },
				func() error { return col.Delete("x") },
			} {
				before := syncsOf(r)
				if err := write(); err != nil {
					t.Fatal(err)
				}
				if got := syncsOf(r) - before; got != c.syncs {
					t.Fatalf("write %d: %d syncs, want %d", i, got, c.syncs)
				}
			}
		})
	}
}

// TestLiveEditFsyncs counts the syncs from an edit on device A to its
// application on device B, both live and durable through a relay: A's
// commit, A's push and the bookkeeping of its acknowledgement, B's apply
// and B's cursor. Only A's commit needs one; the rest the relay can send
// again.
func TestLiveEditFsyncs(t *testing.T) {
	p, o := benchRelay(t)
	// Each device tells when its session is live: its catch-up sync, which
	// may push and fsync, is over by then.
	opened := func() (*Replica, <-chan struct{}) {
		live := make(chan struct{}, 1)
		od := *o
		od.Listener = Listener{Status: func(st SyncStatus) {
			if st.State == StateLive {
				select {
				case live <- struct{}{}:
				default:
				}
			}
		}}
		return open(t, t.TempDir(), &od), live
	}
	devA, liveA := opened()
	devB, liveB := opened()
	feedB := (&Collection{r: devB, name: "c"}).Watch(1024)
	defer feedB.Close()
	for _, r := range []*Replica{devA, devB} {
		if err := r.AddProfile(p); err != nil {
			t.Fatal(err)
		}
	}
	for _, live := range []<-chan struct{}{liveA, liveB} {
		select {
		case <-live:
		case <-time.After(20 * time.Second):
			t.Fatal("a device's live session never went live")
		}
	}
	a := &Collection{r: devA, name: "c"}
	edit := func(n int64) {
		t.Helper()
		if err := a.Update("x", func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, n) }); err != nil {
			t.Fatal(err)
		}
		h, err := a.Heads("x")
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, feedB, "x", h)
	}
	if err := a.Create("x", map[string]any{"n": 0}); err != nil {
		t.Fatal(err)
	}
	h, err := a.Heads("x")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, feedB, "x", h)

	baseA, baseB := syncsOf(devA), syncsOf(devB)
	// A handles its edits one at a time: once B has the second, A is done
	// with the first one's acknowledgement.
	edit(1)
	edit(2)
	if got := syncsOf(devA) - baseA; got != 2 {
		t.Errorf("device A: %d syncs for 2 edits, their pushes and acknowledgements; want 2", got)
	}
	if got := syncsOf(devB) - baseB; got != 0 {
		t.Errorf("device B: %d syncs applying 2 edits; want 0", got)
	}
	var m map[string]any
	if err := (&Collection{r: devB, name: "c"}).Get("x", &m); err != nil || m["n"] != int64(2) {
		t.Fatalf("B's x = %v, %v", m, err)
	}
}

// TestWritesGoOnDuringFsync: while a local edit's fsync runs, the store
// takes other writes and reads (a live session's cursor, the relay's
// acknowledgements): Badger's DB.Sync would hold its memtables' lock
// through the fsync of the active log, and stop them all until it is
// done.
func TestWritesGoOnDuringFsync(t *testing.T) {
	if !badgerdir.FsyncLogsDirect {
		t.Skip("Badger's DB.Sync fsyncs the active logs here")
	}
	dir := t.TempDir()
	r := open(t, dir, nil)
	col := coll(t, r, "c")
	if err := col.Put("x", map[string]any{"n": 1}); err != nil {
		t.Fatal(err)
	}
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	r.fsync.FsyncLog = func(path string) error {
		if filepath.Ext(path) == ".mem" {
			once.Do(func() { close(held); <-release })
		}
		return badgerdir.FsyncFile(path)
	}
	edited := make(chan error, 1)
	go func() { edited <- col.Put("y", map[string]any{"n": 2}) }()
	select {
	case <-held:
	case err := <-edited:
		t.Fatalf("the edit returned (%v) without fsyncing the active memtable log", err)
	}
	// A write that needs no fsync, and a read, while the fsync is held.
	if err := r.update(func(txn *badger.Txn) error { return txn.Set([]byte("zz-test"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := col.Get("x", &m); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-edited:
		t.Fatalf("the edit returned (%v) before its fsync", err)
	default:
	}
	close(release)
	if err := <-edited; err != nil {
		t.Fatal(err)
	}
}

// TestSyncFsyncsTheValueLogOnlyWhenWritten: a small edit's sync leaves
// the active value log alone, as Badger wrote nothing to it; an edit
// holding a value past the value threshold, which Badger writes there, is
// fsynced with it.
func TestSyncFsyncsTheValueLogOnlyWhenWritten(t *testing.T) {
	if !badgerdir.FsyncLogsDirect {
		t.Skip("Badger's DB.Sync fsyncs the active logs here")
	}
	r := open(t, t.TempDir(), nil)
	col := coll(t, r, "c")
	var fsynced []string
	r.fsync.FsyncLog = func(path string) error {
		fsynced = append(fsynced, filepath.Ext(path))
		return badgerdir.FsyncFile(path)
	}
	edit := func(v any) []string {
		t.Helper()
		fsynced = nil
		if err := col.Put("x", map[string]any{"v": v}); err != nil {
			t.Fatal(err)
		}
		return fsynced
	}
	edit(1) // the first sync of this test fsyncs both
	if got := edit(2); !slices.Equal(got, []string{".mem"}) {
		t.Fatalf("a small edit fsynced %v, want only the memtable log", got)
	}
	if got := edit(strings.Repeat("x", 400<<10)); !slices.Contains(got, ".vlog") {
		t.Fatalf("an edit with a %d-byte value fsynced %v, want the value log too", 400<<10, got)
	}
}
