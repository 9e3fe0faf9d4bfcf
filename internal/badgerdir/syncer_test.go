package badgerdir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// TestSyncsAreShared: callers that arrive while a sync runs share the
// next one, which begins after they arrived; none returns on a sync that
// began before it.
func TestSyncsAreShared(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := NewSyncer(nil, "dir", false)
		release := make(chan struct{})
		var runs atomic.Int32
		s.Run = func() error { runs.Add(1); <-release; return nil }

		var returned sync.WaitGroup
		returned.Add(1)
		var first atomic.Bool
		go func() { defer returned.Done(); s.Sync(); first.Store(true) }()
		synctest.Wait() // the first sync runs

		var waiters sync.WaitGroup
		var done atomic.Int32
		for range 3 {
			waiters.Add(1)
			go func() {
				defer waiters.Done()
				s.Sync()
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
		s.Run = func() error { return boom }
		if err := s.Sync(); !errors.Is(err, boom) {
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
	db := openSynced(t, dir)
	// A value past the threshold, so the value log is written too.
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("x"), make([]byte, 2<<10)) }); err != nil {
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

// openSynced opens a Badger store in dir as Ferry's stores do, with
// SyncWrites off, and closes it when the test ends.
func openSynced(t *testing.T, dir string) *badger.DB {
	t.Helper()
	db, err := Open(badger.DefaultOptions(dir).WithSyncWrites(false).WithLogger(nil).WithValueThreshold(1 << 10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Close(db) })
	return db
}

// touchFiles creates empty files of these names in dir.
func touchFiles(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func sorted(a string, more ...string) []string {
	out := append([]string{a}, more...)
	slices.Sort(out)
	return out
}

// TestSyncFsyncsRotatedLogs: a sync fsyncs, after DB.Sync, each log of the
// store's folder that is no longer the newest of its kind and was not
// fsynced by an earlier sync, and fails if one cannot be.
func TestSyncFsyncsRotatedLogs(t *testing.T) {
	db := openSynced(t, t.TempDir())
	dir := t.TempDir() // the logs the syncer lists, beside a real Badger's DB.Sync
	s := NewSyncer(db, dir, false)
	var fsynced []string
	var fail error
	s.FsyncLog = func(path string) error {
		fsynced = append(fsynced, filepath.Base(path))
		return fail
	}
	// Badger's count of value log writes: moved before each step unless
	// a step says otherwise.
	var vlogWrites int64
	s.vlogWrites = func() (int64, bool) { return vlogWrites, true }
	touch := func(names ...string) { touchFiles(t, dir, names...) }
	step := func(want ...string) {
		t.Helper()
		vlogWrites++
		fsynced = nil
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(fsynced, want) {
			t.Fatalf("fsynced %v, want %v", fsynced, want)
		}
	}
	// Where the syncer fsyncs the active logs itself (FsyncLogsDirect),
	// the newest of each kind is fsynced at every sync too.
	active := func(names ...string) []string {
		if FsyncLogsDirect {
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

	if FsyncLogsDirect {
		// Nothing written to the value log since the last sync: its
		// fsync covers it. A write since, and it is fsynced again.
		vlogWrites--
		step("00003.mem")
		step("000002.vlog", "00003.mem")
	}

	fail = errors.New("disk on fire")
	touch("00004.mem")
	if err := s.Sync(); !errors.Is(err, fail) {
		t.Fatalf("sync = %v, want the fsync's error", err)
	}
	if FsyncLogsDirect {
		// After a failed sync, the value log is fsynced again though
		// nothing was written to it.
		fail = nil
		vlogWrites--
		step(active("000002.vlog", "00004.mem")...)
	}
}

// TestSyncListsTheFolderOnlyWhenItChanged: a sync lists the store's
// folder again only when the folder changed since a listing that saw it
// unchanged for listedAge (a large store's listing costs more than an
// fsync), and a log created since is still found and fsynced.
func TestSyncListsTheFolderOnlyWhenItChanged(t *testing.T) {
	db := openSynced(t, t.TempDir())
	dir := t.TempDir() // the logs the syncer lists, beside a real Badger's DB.Sync
	s := NewSyncer(db, dir, false)
	var fsynced []string
	s.FsyncLog = func(path string) error {
		fsynced = append(fsynced, filepath.Base(path))
		return nil
	}
	var vlogWrites int64
	s.vlogWrites = func() (int64, bool) { return vlogWrites, true }
	touch := func(names ...string) { touchFiles(t, dir, names...) }
	age := func() {
		old := time.Now().Add(-time.Hour)
		if err := os.Chtimes(dir, old, old); err != nil {
			t.Fatal(err)
		}
	}
	step := func(listings int, want ...string) {
		t.Helper()
		fsynced = nil
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		if s.listings != listings {
			t.Fatalf("%d listings, want %d", s.listings, listings)
		}
		if !FsyncLogsDirect {
			return // DB.Sync fsyncs the active logs; only rotated ones are listed
		}
		if !slices.Equal(fsynced, want) {
			t.Fatalf("fsynced %v, want %v", fsynced, want)
		}
	}
	touch("00001.mem", "000001.vlog", "000001.sst")
	age()
	step(1, "000001.vlog", "00001.mem")
	step(1, "00001.mem") // unchanged for an hour: not listed again
	step(1, "00001.mem")
	touch("00002.mem") // a rotation
	step(2, "00001.mem", "00002.mem")
	step(3, "00002.mem") // changed less than listedAge before the listing
	age()
	step(4, "00002.mem")
	step(4, "00002.mem")
}

// TestSyncKeepsOnlyTheNewestLogsOpen: the syncer keeps the logs it
// fsyncs open, but only the newest of each kind: an older one is closed
// once fsynced after its rotation, or once gone (an open file would keep
// a deleted log's disk space), and Close closes the rest.
func TestSyncKeepsOnlyTheNewestLogsOpen(t *testing.T) {
	if !FsyncLogsDirect {
		t.Skip("Badger's DB.Sync fsyncs the active logs here")
	}
	db := openSynced(t, t.TempDir())
	dir := t.TempDir()
	s := NewSyncer(db, dir, false)
	touch := func(names ...string) { touchFiles(t, dir, names...) }
	open := func() []string {
		var names []string
		for n := range s.open {
			names = append(names, n)
		}
		slices.Sort(names)
		return names
	}
	step := func(want ...string) {
		t.Helper()
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		if got := open(); !slices.Equal(got, want) {
			t.Fatalf("open after the sync: %v, want %v", got, want)
		}
	}
	touch("00001.mem", "000001.vlog")
	step("000001.vlog", "00001.mem")
	touch("00002.mem", "00003.mem") // two rotations
	step("000001.vlog", "00003.mem")
	if err := os.Remove(filepath.Join(dir, "00003.mem")); err != nil { // flushed, with a newer log
		t.Fatal(err)
	}
	touch("00004.mem")
	step("000001.vlog", "00004.mem")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := open(); len(got) > 0 || s.dirFile != nil {
		t.Fatalf("open after Close: %v (folder open: %v)", got, s.dirFile != nil)
	}
}
