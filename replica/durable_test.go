package replica

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// TestSyncsAreShared: callers that arrive while a sync runs share the
// next one, which begins after they arrived; none returns on a sync that
// began before it.
func TestSyncsAreShared(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newSyncer(nil, "dir", false)
		release := make(chan struct{})
		var runs atomic.Int32
		s.run = func() error { runs.Add(1); <-release; return nil }

		var returned sync.WaitGroup
		returned.Add(1)
		var first atomic.Bool
		go func() { defer returned.Done(); s.sync(); first.Store(true) }()
		synctest.Wait() // the first sync runs

		var waiters sync.WaitGroup
		var done atomic.Int32
		for range 3 {
			waiters.Add(1)
			go func() {
				defer waiters.Done()
				s.sync()
				done.Add(1)
			}()
		}
		synctest.Wait() // all three wait
		release <- struct{}{}
		returned.Wait()
		synctest.Wait() // one of the three leads the second sync
		if !first.Load() || runs.Load() != 2 {
			t.Fatalf("after the first sync: first returned %v, %d syncs run", first.Load(), runs.Load())
		}
		if n := done.Load(); n != 0 {
			t.Fatalf("%d callers returned on a sync that began before they called", n)
		}
		release <- struct{}{}
		waiters.Wait()
		if runs.Load() != 2 || done.Load() != 3 {
			t.Fatalf("%d syncs for 4 callers (want 2), %d of 3 returned", runs.Load(), done.Load())
		}

		// An error reaches every caller of the sync that failed.
		boom := errors.New("disk on fire")
		s.run = func() error { return boom }
		if err := s.sync(); !errors.Is(err, boom) {
			t.Fatalf("sync = %v, want the run's error", err)
		}
	})
}

// TestRotatedLogs: after DB.Sync, the logs Badger rotated away from since
// the last sync are fsynced, and no others.
func TestRotatedLogs(t *testing.T) {
	logs := func(ids ...uint64) []logFile {
		var out []logFile
		for _, id := range ids {
			out = append(out, logFile{id, fmt.Sprintf("%05d.mem", id)})
		}
		return out
	}
	seen := map[string]uint64{}
	steps := []struct {
		mem  []logFile
		want []string
	}{
		// The first sync: logs an earlier run left, not yet flushed.
		{logs(3, 4, 5), []string{"00003.mem", "00004.mem"}},
		{logs(5), nil},                                      // no rotation
		{logs(5, 6), []string{"00005.mem"}},                 // 5 rotated away from
		{logs(6, 7, 8), []string{"00006.mem", "00007.mem"}}, // two rotations
		{logs(8), nil},                                      // older ones flushed
	}
	for i, st := range steps {
		got := rotated(map[string][]logFile{".mem": st.mem}, seen)
		if !slices.Equal(got, st.want) {
			t.Fatalf("step %d: fsynced %v, want %v", i, got, st.want)
		}
	}
}

// TestBadgerLogNames fails if Badger no longer names its logs as the
// syncer expects: rotated logs would go unfsynced.
func TestBadgerLogNames(t *testing.T) {
	dir := t.TempDir()
	r := open(t, dir, nil)
	if err := coll(t, r, "c").Put("x", map[string]any{"n": 1}); err != nil {
		t.Fatal(err)
	}
	logs, err := badgerLogs(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, ext := range syncedLogs {
		if len(logs[ext]) == 0 {
			t.Errorf("no %s log in a Badger store: found %v", ext, logs)
		}
	}
}

func syncsOf(r *Replica) int64 { return r.fsync.syncs.Load() }

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
	devA, devB := open(t, t.TempDir(), o), open(t, t.TempDir(), o)
	feedB := (&Collection{r: devB, name: "c"}).Watch(1024)
	defer feedB.Close()
	for _, r := range []*Replica{devA, devB} {
		if err := r.AddProfile(p); err != nil {
			t.Fatal(err)
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

func sorted(a string, more ...string) []string {
	out := append([]string{a}, more...)
	slices.Sort(out)
	return out
}

// TestWritesGoOnDuringFsync: while a local edit's fsync runs, the store
// takes other writes and reads (a live session's cursor, the relay's
// acknowledgements): Badger's DB.Sync would hold its memtables' lock
// through the fsync of the active log, and stop them all until it is
// done.
func TestWritesGoOnDuringFsync(t *testing.T) {
	if !fsyncLogsDirect {
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
	r.fsync.fsyncLog = func(path string) error {
		if filepath.Ext(path) == ".mem" {
			once.Do(func() { close(held); <-release })
		}
		return fsyncFile(path)
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

// TestSyncFsyncsRotatedLogs: a sync fsyncs, after DB.Sync, each log of the
// store's folder that is no longer the newest of its kind and was not
// fsynced by an earlier sync, and fails if one cannot be.
func TestSyncFsyncsRotatedLogs(t *testing.T) {
	r := open(t, t.TempDir(), nil)
	dir := t.TempDir() // the logs the syncer lists, beside a real Badger's DB.Sync
	s := newSyncer(r.db, dir, false)
	var fsynced []string
	var fail error
	s.fsyncLog = func(path string) error {
		fsynced = append(fsynced, filepath.Base(path))
		return fail
	}
	// Badger's count of value log writes: moved before each step unless
	// a step says otherwise.
	var vlogWrites int64
	s.vlogWrites = func() (int64, bool) { return vlogWrites, true }
	touch := func(names ...string) {
		for _, n := range names {
			if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	step := func(want ...string) {
		t.Helper()
		vlogWrites++
		fsynced = nil
		if err := s.sync(); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(fsynced, want) {
			t.Fatalf("fsynced %v, want %v", fsynced, want)
		}
	}
	// Where the syncer fsyncs the active logs itself (fsyncLogsDirect),
	// the newest of each kind is fsynced at every sync too.
	active := func(names ...string) []string {
		if fsyncLogsDirect {
			return names
		}
		return nil
	}
	touch("00001.mem", "00002.mem", "000001.vlog", "000002.vlog", "MANIFEST", "000001.sst")
	// The older of each kind; the newest DB.Sync covers, or the syncer.
	step(sorted("000001.vlog", append([]string{"00001.mem"}, active("000002.vlog", "00002.mem")...)...)...)
	step(active("000002.vlog", "00002.mem")...) // nothing rotated since
	touch("00003.mem")
	step(sorted("00002.mem", active("000002.vlog", "00003.mem")...)...)

	if fsyncLogsDirect {
		// Nothing written to the value log since the last sync: its
		// fsync covers it. A write since, and it is fsynced again.
		vlogWrites--
		step("00003.mem")
		step("000002.vlog", "00003.mem")
	}

	fail = errors.New("disk on fire")
	touch("00004.mem")
	if err := s.sync(); !errors.Is(err, fail) {
		t.Fatalf("sync = %v, want the fsync's error", err)
	}
	if fsyncLogsDirect {
		// After a failed sync, the value log is fsynced again though
		// nothing was written to it.
		fail = nil
		vlogWrites--
		step(active("000002.vlog", "00004.mem")...)
	}
}

// TestSyncFsyncsTheValueLogOnlyWhenWritten: a small edit's sync leaves
// the active value log alone, as Badger wrote nothing to it; an edit
// holding a value past the value threshold, which Badger writes there, is
// fsynced with it.
func TestSyncFsyncsTheValueLogOnlyWhenWritten(t *testing.T) {
	if !fsyncLogsDirect {
		t.Skip("Badger's DB.Sync fsyncs the active logs here")
	}
	r := open(t, t.TempDir(), nil)
	col := coll(t, r, "c")
	var fsynced []string
	r.fsync.fsyncLog = func(path string) error {
		fsynced = append(fsynced, filepath.Ext(path))
		return fsyncFile(path)
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
