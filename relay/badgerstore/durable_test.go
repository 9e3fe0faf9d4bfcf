package badgerstore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/relay"
)

// fsyncRecorder replaces s's fsync of a log: it records each log's kind,
// and fails with fail while it is set.
type fsyncRecorder struct {
	mu   sync.Mutex
	logs []string
	fail error
}

func recordFsyncs(s *Store) *fsyncRecorder {
	r := &fsyncRecorder{}
	s.fsync.FsyncLog = func(path string) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.logs = append(r.logs, filepath.Ext(path))
		if r.fail != nil {
			return r.fail
		}
		return badgerdir.FsyncFile(path)
	}
	return r
}

func (r *fsyncRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.logs
	r.logs = nil
	return out
}

func (r *fsyncRecorder) setFail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = err
}

// TestBadgerWritesFsync: every write to a durable store fsyncs the
// memtable's log before it returns, and the value log only when written
// to; a relaxed store fsyncs nothing, and Badger's own SyncWrites is off
// either way (the store fsyncs for it).
func TestBadgerWritesFsync(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	s := bsOpen(t, t.TempDir(), nil)
	if s.db.Opts().SyncWrites {
		t.Fatal("Badger's SyncWrites is on: every write would fsync the value log too")
	}
	rec := recordFsyncs(s)
	bsAppend(t, s, 0, now, bsEntry("a", nil, "1")) // the first sync fsyncs both logs
	rec.take()
	writes := []struct {
		name  string
		write func() error
	}{
		{"append", func() error {
			_, err := s.Append(ctx, bsColl, 0, now, []relay.Entry{bsEntry("b", nil, "1")})
			return err
		}},
		{"acquire", func() error { _, err := s.Acquire(ctx, bsColl, "dev", time.Minute, now); return err }},
		{"truncate", func() error { _, err := s.Truncate(ctx, bsColl, 1); return err }},
	}
	for _, w := range writes {
		before := s.fsync.Syncs()
		if err := w.write(); err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
		if got := rec.take(); !slices.Equal(got, []string{".mem"}) {
			t.Errorf("%s fsynced %v, want the memtable's log alone", w.name, got)
		}
		if n := s.fsync.Syncs() - before; n != 1 {
			t.Errorf("%s: %d syncs, want 1", w.name, n)
		}
	}

	r := bsOpen(t, t.TempDir(), &Options{Relaxed: true})
	if r.db.Opts().SyncWrites || !r.fsync.Off() {
		t.Fatal("a relaxed store fsyncs")
	}
	bsAppend(t, r, 0, now, bsEntry("a", nil, "1"))
	if n := r.fsync.Syncs(); n != 0 {
		t.Fatalf("a relaxed store ran %d syncs", n)
	}
}

// TestBadgerCursorsWaitForTheFsync: while an append's fsync runs, the
// reads that give out sequence numbers (Head, Log, Records) wait for it,
// as a device keeps what they return as a cursor; a record's read, which
// gives none, goes on. Once the fsync is done they return the append.
func TestBadgerCursorsWaitForTheFsync(t *testing.T) {
	ctx := context.Background()
	s := bsOpen(t, t.TempDir(), nil)
	bsAppend(t, s, 0, time.Now(), bsEntry("a", nil, "1"))
	held, release := make(chan struct{}), make(chan struct{})
	var once, releasing sync.Once
	var released atomic.Bool // set before the fsync is let go
	letGo := func() { releasing.Do(func() { released.Store(true); close(release) }) }
	t.Cleanup(letGo) // before the store closes, whatever fails
	s.fsync.FsyncLog = func(path string) error {
		if filepath.Ext(path) == ".mem" {
			once.Do(func() { close(held); <-release })
		}
		return badgerdir.FsyncFile(path)
	}
	appended := make(chan error, 1)
	go func() {
		_, err := s.Append(ctx, bsColl, 0, time.Now(), []relay.Entry{bsEntry("b", nil, "1")})
		appended <- err
	}()
	<-held

	type read struct {
		name string
		seq  func() (uint64, error)
	}
	reads := []read{
		{"Head", func() (uint64, error) { return s.Head(ctx, bsColl) }},
		{"Log", func() (uint64, error) {
			es, err := s.Log(ctx, bsColl, 0, 10)
			if err != nil || len(es) == 0 {
				return 0, err
			}
			return es[len(es)-1].Seq, nil
		}},
		{"Records", func() (uint64, error) {
			rs, err := s.Records(ctx, bsColl, "", 10)
			var most uint64
			for _, r := range rs {
				most = max(most, r.Seq)
			}
			return most, err
		}},
	}
	results := make([]chan uint64, len(reads))
	for i, r := range reads {
		results[i] = make(chan uint64, 1)
		go func() {
			seq, err := r.seq()
			if err != nil {
				t.Errorf("%s: %v", r.name, err)
			}
			if !released.Load() {
				t.Errorf("%s returned %d while the append's fsync was held", r.name, seq)
			}
			results[i] <- seq
		}()
	}
	// The record's read goes on while the fsync is held.
	if rec, err := s.Record(ctx, bsColl, "a"); err != nil || rec.Seq != 1 {
		t.Fatalf("Record during the fsync = %+v, %v", rec, err)
	}
	letGo()
	if err := <-appended; err != nil {
		t.Fatal(err)
	}
	for i, r := range reads {
		if seq := <-results[i]; seq != 2 {
			t.Errorf("%s = %d after the fsync, want 2", r.name, seq)
		}
	}
}

// TestBadgerFailedFsync: an append whose fsync fails returns the error
// (the device is not acknowledged), and until an fsync succeeds the reads
// that give out sequence numbers fail rather than name its entry; then
// they do, and writes go on.
func TestBadgerFailedFsync(t *testing.T) {
	ctx := context.Background()
	s := bsOpen(t, t.TempDir(), nil)
	bsAppend(t, s, 0, time.Now(), bsEntry("a", nil, "1"))
	rec := recordFsyncs(s)
	boom := errors.New("disk on fire")
	rec.setFail(boom)
	if _, err := s.Append(ctx, bsColl, 0, time.Now(), []relay.Entry{bsEntry("b", nil, "1")}); !errors.Is(err, boom) {
		t.Fatalf("Append = %v, want the fsync's error", err)
	}
	if h, err := s.Head(ctx, bsColl); !errors.Is(err, boom) {
		t.Fatalf("Head with the fsync failing = %d, %v; want the fsync's error", h, err)
	}
	if _, err := s.Log(ctx, bsColl, 0, 10); !errors.Is(err, boom) {
		t.Fatalf("Log with the fsync failing: %v, want the fsync's error", err)
	}
	rec.setFail(nil)
	if h, err := s.Head(ctx, bsColl); err != nil || h != 2 {
		t.Fatalf("Head once fsyncs work = %d, %v; want 2", h, err)
	}
	if got := bsAppend(t, s, 0, time.Now(), bsEntry("c", nil, "1")); got != 3 {
		t.Fatalf("next append = %d, want 3", got)
	}
}

// TestSplitAppendFsyncsEachPart: a split append fsyncs each transaction
// before it commits the next, so a power loss cannot keep the publishing
// one without the entries it publishes.
func TestSplitAppendFsyncsEachPart(t *testing.T) {
	s := splitOpen(t, t.TempDir())
	bsAppend(t, s, 0, time.Now(), splitBase()...)
	var syncsAt []int64
	s.splitHook = func(k int) error { syncsAt = append(syncsAt, s.fsync.Syncs()); return nil }
	before := s.fsync.Syncs()
	bsAppend(t, s, 0, time.Now(), splitGroup(1)...)
	if len(syncsAt) < 3 {
		t.Fatalf("%d transactions, want a split append", len(syncsAt))
	}
	for k, n := range syncsAt {
		// Each hook runs after its transaction's commit, before its fsync.
		if want := before + int64(k); n != want {
			t.Fatalf("after transaction %d: %d syncs, want %d (one per earlier transaction)", k+1, n-before, k)
		}
	}
	if n := s.fsync.Syncs() - before; n != int64(len(syncsAt)) {
		t.Fatalf("%d syncs for %d transactions", n, len(syncsAt))
	}
}

// TestBadgerPowerCut cuts the power, in effect, after every fsync of an
// append while another goroutine reads the head as a device would take a
// cursor: each fsync of the write-ahead log copies the store's folder
// (the writer holds the collection's lock meanwhile, so the copy is the
// folder as that fsync left it, Badger's own tables and manifest
// included, which Badger fsyncs as it writes them). A power cut any time
// before the next fsync keeps that copy and loses the rest. So every
// acknowledgement and every head returned before the next copy was made
// must be in the copy: no acknowledged append is lost, and no cursor
// names an entry the relay could still lose.
func TestBadgerPowerCut(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := &Options{GCInterval: -1, memTableSize: 1 << 20, valueLogFileSize: 1 << 20}
	s := bsOpen(t, dir, opts)
	copies := t.TempDir()

	// The log of what happened, in order: a copy made ("copy", its
	// number), an append acknowledged ("ack", its sequence number), a
	// head read ("head", the head).
	type event struct {
		kind string
		n    uint64
	}
	var mu sync.Mutex
	var events []event
	note := func(kind string, n uint64) {
		mu.Lock()
		events = append(events, event{kind, n})
		mu.Unlock()
	}
	var made uint64
	s.fsync.FsyncLog = func(path string) error {
		if err := badgerdir.FsyncFile(path); err != nil {
			return err
		}
		if filepath.Ext(path) != ".mem" {
			return nil
		}
		made++
		if err := copyFolder(dir, filepath.Join(copies, strconv.FormatUint(made, 10))); err != nil {
			return err
		}
		note("copy", made)
		return nil
	}

	stop := make(chan struct{})
	var reads sync.WaitGroup
	reads.Add(1)
	go func() {
		defer reads.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			h, err := s.Head(ctx, bsColl)
			if err != nil {
				t.Error(err)
				return
			}
			note("head", h)
		}
	}()
	var base crdt.Heads
	for i := range 20 {
		e := bsEntry("a", base, strconv.Itoa(i))
		seq, err := s.Append(ctx, bsColl, 0, time.Now(), []relay.Entry{e})
		if err != nil {
			t.Fatal(err)
		}
		note("ack", seq)
		base = e.Heads
	}
	close(stop)
	reads.Wait()

	// For each copy, the most any acknowledgement or head returned
	// before the next copy named.
	var most []uint64 // by copy number - 1
	var cur uint64
	mu.Lock()
	for _, ev := range events {
		if ev.kind == "copy" {
			if ev.n > 1 {
				most = append(most, cur) // everything before copy n, against copy n-1
			}
			continue
		}
		cur = max(cur, ev.n)
	}
	most = append(most, cur)
	mu.Unlock()
	heads := 0
	for _, ev := range events {
		if ev.kind == "head" {
			heads++
		}
	}
	t.Logf("%d copies, %d heads read", made, heads)
	for k := uint64(1); k <= made; k++ {
		c, err := Open(filepath.Join(copies, strconv.FormatUint(k, 10)), opts)
		if err != nil {
			t.Fatalf("the store as fsync %d left it: %v", k, err)
		}
		h, err := c.Head(ctx, bsColl)
		if cerr := c.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
		if want := most[k-1]; h < want {
			t.Fatalf("a power cut after fsync %d keeps head %d, but %d was acknowledged or given out before the next fsync", k, h, want)
		}
	}
}

// copyFolder copies the files of dir into a new folder to.
func copyFolder(dir, to string) error {
	if err := os.Mkdir(to, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == "LOCK" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
