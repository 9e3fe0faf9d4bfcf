package badgerdir

import (
	"cmp"
	"errors"
	"expvar"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Syncer makes a Badger store's commits durable when its owner says so,
// for a store opened with SyncWrites off: a commit is then written to
// Badger's logs (the memtable's write-ahead log, and the value log for
// large values) but not fsynced, and Sync fsyncs what every commit before
// it wrote. Badger's SyncWrites instead fsyncs both logs after every
// write, the value log even when nothing was written to it, which costs
// a device flush; and it does so on Badger's one writer goroutine, so
// every store's writes wait for it.
//
// Badger's DB.Sync fsyncs only the active memtable's log and the current
// value log. A log Badger has just rotated away from is not fsynced by it
// (with SyncWrites off it never is: a memtable's log is deleted once the
// memtable is flushed to a table, which is fsynced, and an old value log
// stays as it is). A commit written just before a rotation would be lost
// by a power loss before that flush even after DB.Sync. So after
// DB.Sync, the syncer lists the store's folder and fsyncs every log
// created since its last sync that is no longer the newest: each was
// complete when rotated away from.
//
// On Linux the syncer fsyncs the active logs itself, through files of
// its own, rather than by DB.Sync, which holds Badger's memtable lock
// through the fsync and so stops every write and read of the store
// meanwhile (see SyncNow).
//
// Syncs are shared: callers that arrive while one runs wait for the
// next, which covers them all, so concurrent durable commits cost one
// fsync between them, as Badger's own group commit did.
//
// What is left: unfsynced commits survive a power cut as a prefix, as
// Badger's logs are replayed in order and stop at the first damaged
// entry, except across a rotation, if the cut falls while the old log's
// memtable is being flushed and the kernel had written back the new log's
// pages but not the old one's (it writes back the older first). Then a
// later commit could survive an earlier one. A store that must not let
// that happen syncs between the two commits.
type Syncer struct {
	db  *badger.DB
	dir string // "" for a store in memory: nothing to fsync
	off bool

	syncs atomic.Int64 // syncs run

	// Run is one sync (SyncNow) and FsyncLog one log's fsync (FsyncFile);
	// tests replace them before the first Sync.
	Run      func() error
	FsyncLog func(path string) error

	// vlogWrites counts the entries Badger has written to value logs
	// (ok false: it cannot tell); tests replace it. lastVlog is the
	// count read as the last sync began (-1: none yet). See SyncNow.
	vlogWrites func() (n int64, ok bool)
	lastVlog   int64

	mu      sync.Mutex
	cond    sync.Cond
	running bool
	started uint64 // syncs begun
	done    uint64 // syncs finished
	err     error  // the last finished sync's

	// Logs by kind (memtable, value), as the next log id at or above
	// which a log may need an fsync: every older one was fsynced.
	seen map[string]uint64

	// The folder's last listing (see logs), the folder's modification
	// time just before it, and whether that time was old enough then to
	// show any later change; listings counts them, for tests.
	listed    map[string][]logFile
	listedMod time.Time
	listedOld bool
	listings  int

	// Files kept open: the folder, for its modification time, and the
	// logs being fsynced, by name, each closed once fsynced after its
	// rotation (see fsyncOpen). Opening and closing them at every sync,
	// and stating the folder by its path, cost a sixth of a small
	// append's CPU.
	dirFile *os.File
	open    map[string]*os.File
}

// Badger's log file names: NNNNN.mem for memtables, NNNNNN.vlog for the
// value log, numbered in creation order.
var syncedLogs = []string{".mem", ".vlog"}

// NewSyncer returns the syncer of db, whose folder is dir ("" for a store
// in memory). With off, or in memory, Sync does nothing.
func NewSyncer(db *badger.DB, dir string, off bool) *Syncer {
	s := &Syncer{db: db, dir: dir, off: off || dir == "", seen: map[string]uint64{}, lastVlog: -1, open: map[string]*os.File{}}
	s.cond.L = &s.mu
	s.Run = s.SyncNow
	s.FsyncLog = s.fsyncOpen
	s.vlogWrites = badgerVlogWrites(db)
	return s
}

// Off reports whether Sync does nothing.
func (s *Syncer) Off() bool { return s.off }

// Syncs returns the number of syncs run.
func (s *Syncer) Syncs() int64 { return s.syncs.Load() }

// badgerVlogWrites reads Badger's count of entries written to value logs,
// a process-wide metric (every Badger store of the process adds to it),
// if db keeps its metrics.
func badgerVlogWrites(db *badger.DB) func() (int64, bool) {
	n, ok := expvar.Get("badger_write_num_vlog").(*expvar.Int)
	if !ok || db == nil || !db.Opts().MetricsEnabled {
		return func() (int64, bool) { return 0, false }
	}
	return func() (int64, bool) { return n.Value(), true }
}

// Sync returns once a sync begun after it was called has finished, with
// that sync's error.
func (s *Syncer) Sync() error {
	if s.off {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	need := s.started + 1 // a sync running now may have begun before the caller's commit
	for s.done < need {
		if !s.running {
			s.running = true
			s.started++
			n := s.started
			s.mu.Unlock()
			err := s.Run()
			s.mu.Lock()
			s.running, s.done, s.err = false, n, err
			s.cond.Broadcast()
			break
		}
		s.cond.Wait()
	}
	return s.err
}

// SyncNow fsyncs Badger's active logs, then the logs rotated since the
// last time. Only one runs at a time.
//
// Where a file's fsync also writes what was written to it through a
// shared mapping (Linux: msync and fsync write back the same page cache),
// the active logs are fsynced through files of their own rather than by
// DB.Sync, which holds Badger's lock of its memtables through the
// memtable log's fsync: every write, and then every read, of the store
// waits meanwhile.
func (s *Syncer) SyncNow() (err error) {
	s.syncs.Add(1)
	if !FsyncLogsDirect {
		if err := s.db.Sync(); err != nil {
			return err
		}
	}
	logs, err := s.logs()
	if err != nil {
		return err
	}
	names := rotated(logs, s.seen)
	if FsyncLogsDirect {
		// The active value log is written only for values past the value
		// threshold (large records), and Badger counts what it writes
		// there: when nothing was written since the last sync began, the
		// fsync that sync made covers it, and fsyncing a clean file still
		// costs a device flush (a third of a small edit's sync here). The
		// count is read before the fsyncs, so an entry written during
		// this sync shows in the next one's.
		n, counted := s.vlogWrites()
		skipVlog := counted && n == s.lastVlog
		s.lastVlog = -1 // until every fsync below succeeded
		if counted {
			defer func() {
				if err == nil {
					s.lastVlog = n
				}
			}()
		}
		for ext, list := range logs {
			if ext == ".vlog" && skipVlog {
				continue
			}
			names = append(names, list[len(list)-1].name)
		}
		slices.Sort(names)
	}
	for _, name := range names {
		if err := s.FsyncLog(filepath.Join(s.dir, name)); err != nil {
			return fmt.Errorf("fsync %s: %w", name, err)
		}
	}
	// Only the newest logs stay open: an older one was fsynced for the
	// last time, or is gone (a memtable's log, flushed to a table), and
	// an open file would keep its disk space.
	for name, f := range s.open {
		if !newest(logs, name) {
			f.Close()
			delete(s.open, name)
		}
	}
	return nil
}

// newest reports whether name is the newest log of its kind in logs.
func newest(logs map[string][]logFile, name string) bool {
	list := logs[filepath.Ext(name)]
	return len(list) > 0 && list[len(list)-1].name == name
}

// fsyncOpen fsyncs a log through a file kept open for it. A file gone
// meanwhile is no error (see FsyncFile).
func (s *Syncer) fsyncOpen(path string) error {
	name := filepath.Base(path)
	f := s.open[name]
	if f == nil {
		var err error
		if f, err = os.Open(path); errors.Is(err, fs.ErrNotExist) {
			return nil
		} else if err != nil {
			return err
		}
		s.open[name] = f
	}
	return datasync(f)
}

// Close closes the files the syncer keeps open. The caller makes sure no
// Sync runs.
func (s *Syncer) Close() error {
	var errs []error
	for name, f := range s.open {
		errs = append(errs, f.Close())
		delete(s.open, name)
	}
	if s.dirFile != nil {
		errs = append(errs, s.dirFile.Close())
		s.dirFile = nil
	}
	return errors.Join(errs...)
}

// logs lists the store's logs, or returns the last listing if the folder
// has not changed since. Listing a folder costs in proportion to its
// files (1.2 ms for 1,000 here), and a large store holds many tables, so
// the folder is listed again only when its modification time moved: a
// log created or deleted since. That time has the kernel's coarse
// granularity (a clock tick, 10 ms at most), so a change in the same tick
// as the time seen could hide behind it; the last listing is trusted
// only if the time it saw was listedAge old by then.
func (s *Syncer) logs() (map[string][]logFile, error) {
	if s.dirFile == nil {
		f, err := os.Open(s.dir)
		if err != nil {
			return nil, err
		}
		s.dirFile = f
	}
	st, err := s.dirFile.Stat()
	if err != nil {
		return nil, err
	}
	mod := st.ModTime()
	if s.listed != nil && s.listedOld && mod.Equal(s.listedMod) {
		return s.listed, nil
	}
	logs, err := badgerLogs(s.dir)
	if err != nil {
		return nil, err
	}
	s.listings++
	s.listed, s.listedMod, s.listedOld = logs, mod, time.Since(mod) > listedAge
	return logs, nil
}

// listedAge is how old a folder's modification time must be for a listing
// to show every later change by a new time: ten times the coarsest tick.
const listedAge = 100 * time.Millisecond

// rotated returns the logs to fsync after DB.Sync: those not fsynced
// since they were rotated away from. seen holds, by kind, the newest log
// of the last sync, and is updated: every log older than it was complete,
// and fsynced, by then. The newest log is the one DB.Sync fsynced, or one
// begun after it, which holds no commit that came before the sync.
func rotated(logs map[string][]logFile, seen map[string]uint64) []string {
	var out []string
	for ext, list := range logs {
		newest := list[len(list)-1].id
		for _, l := range list {
			if l.id >= seen[ext] && l.id != newest {
				out = append(out, l.name)
			}
		}
		seen[ext] = newest
	}
	slices.Sort(out)
	return out
}

type logFile struct {
	id   uint64
	name string
}

// badgerLogs lists a store's logs by kind, in creation order.
func badgerLogs(dir string) (map[string][]logFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	logs := map[string][]logFile{}
	for _, e := range entries {
		for _, ext := range syncedLogs {
			num, ok := strings.CutSuffix(e.Name(), ext)
			if !ok {
				continue
			}
			if id, err := strconv.ParseUint(num, 10, 32); err == nil {
				logs[ext] = append(logs[ext], logFile{id, e.Name()})
			}
		}
	}
	for _, list := range logs {
		slices.SortFunc(list, func(a, b logFile) int { return cmp.Compare(a.id, b.id) })
	}
	return logs, nil
}

// FsyncFile fsyncs a file's data. A file gone meanwhile is no error: a
// memtable's log is deleted only once the table holding its data is
// fsynced.
func FsyncFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
