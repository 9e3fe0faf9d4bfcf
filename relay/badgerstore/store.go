package badgerstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/google/uuid"

	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/internal/stripe"
	"github.com/ferrysync/ferry/relay"
)

// Options configure a Store. A nil *Options is valid and
// means the defaults; Open never modifies it.
type Options struct {
	// Logger receives the store's and Badger's logs. Default: discard.
	Logger *slog.Logger

	// Relaxed turns off the fsync after every write, for benchmarks only:
	// an Append that returned nil, and so was acknowledged to a device,
	// may be lost in a power loss or kernel crash.
	Relaxed bool

	// InMemory keeps everything in memory: nothing survives Close. The dir
	// argument of Open is ignored.
	InMemory bool

	// GCInterval is how often Badger's value log is garbage-collected in
	// the background. Default 10 minutes; negative disables it.
	GCInterval time.Duration

	// memTableSize overrides memTableSize, for tests that reach Badger's
	// transaction limit with little data.
	memTableSize int64
	// valueLogFileSize overrides Badger's, for tests that copy the
	// store's files (Badger makes each value log twice this, sparse).
	valueLogFileSize int64
}

func (o *Options) withDefaults() Options {
	var v Options
	if o != nil {
		v = *o
	}
	if v.Logger == nil {
		v.Logger = slog.New(slog.DiscardHandler)
	}
	if v.GCInterval == 0 {
		v.GCInterval = 10 * time.Minute
	}
	return v
}

// Store is the relay's embedded relay.Store: one Badger database in a data
// folder, holding every tenant. Every method is safe for concurrent use.
// Writes to one collection are serialized by an in-process lock (one process
// owns a Badger folder; Badger's own folder lock enforces it), so sequence
// numbers are allocated without races; writes to different collections
// commit in parallel.
//
// Durability: Badger runs with SyncWrites off, and every write fsyncs
// Badger's logs itself (badgerdir.Syncer) before it returns and before
// it lets go of its collection's lock: only the logs written to, and one
// fsync shared by the writes to every collection that end meanwhile.
// Badger shows a commit to readers as soon as it is written, before that
// fsync, so the reads that give out sequence numbers (Head, Log,
// Records), which devices keep as cursors, wait for the fsync of a write
// they saw: a cursor never names an entry a power loss could still take.
// A write in several transactions (a large append, a compaction, clearing
// a failed append) fsyncs between them where a later one must not
// survive without an earlier one.
type Store struct {
	db          *badger.DB
	incarnation string
	opts        Options
	fsync       *badgerdir.Syncer

	// colls serializes writes per collection. Striped, so memory stays
	// bounded however many collections there are; two collections sharing
	// a stripe only wait for each other.
	colls stripe.Locks[relay.Coll]
	// unsynced marks, by stripe of colls, a write committed and not yet
	// fsynced: set before the commit, cleared once fsynced (see locked).
	unsynced [stripe.Count]atomic.Bool

	mu     sync.RWMutex // held for reading by every operation; Close takes it for writing
	closed bool

	// pending marks collections whose failed split append could not be
	// cleared at once (see appendSplit): their next write clears it.
	pendingMu sync.Mutex
	pending   map[relay.Coll]bool
	// splitHook, if set (by tests), is called after each transaction of a
	// split append; an error stops the append there, as if the process
	// died, and Append returns it.
	splitHook func(k int) error
	// readsInHook, set by tests whose splitHook reads the store, keeps
	// viewDurable from waiting for the write the hook runs in.
	readsInHook bool

	closeOnce sync.Once
	closeErr  error
	closing   chan struct{}
	wg        sync.WaitGroup // background goroutines
}

var _ relay.Store = (*Store)(nil)

// Open opens the relay store in dir, creating it (and dir) if
// absent. dir must be missing, empty, or a relay store: a folder with other
// files gives relay.ErrNotRelayStore, a store written by a newer Ferry gives
// relay.ErrNewerStoreFormat, and a damaged store (a file missing, cut short or
// failing its checksums) gives relay.ErrStoreDamaged, in each case without
// writing anything to it or deleting anything from it.
func Open(dir string, o *Options) (*Store, error) {
	opts := o.withDefaults()
	db, err := openBadger(dir, opts)
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, opts: opts, closing: make(chan struct{})}
	syncDir := dir
	if opts.InMemory {
		syncDir = ""
	}
	s.fsync = badgerdir.NewSyncer(db, syncDir, opts.Relaxed)
	if s.incarnation, err = initMeta(db, s.fsync.Sync); err != nil {
		badgerdir.Close(db)
		s.fsync.Close()
		return nil, fmt.Errorf("relay: open store %s: %w", dir, err)
	}
	if err := s.clearAllPending(); err == nil {
		err = s.fsync.Sync()
	}
	if err != nil {
		badgerdir.Close(db)
		s.fsync.Close()
		return nil, fmt.Errorf("relay: open store %s: %w", dir, err)
	}
	for i := range s.unsynced {
		s.unsynced[i].Store(false)
	}
	if !opts.InMemory && opts.GCInterval > 0 {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			badgerdir.GC(db, opts.GCInterval, s.closing, opts.Logger)
		}()
	}
	return s, nil
}

func openBadger(dir string, opts Options) (*badger.DB, error) {
	if !opts.InMemory {
		if err := checkStoreDir(dir); err != nil {
			return nil, err
		}
	}
	mt := opts.memTableSize
	if mt == 0 {
		mt = memTableSize
		if opts.InMemory {
			// Everything lives in the memtables anyway, and Badger counts
			// every value in full against a transaction in memory: keep a
			// transaction large enough for any snapshot max_record allows.
			mt = 64 << 20
		}
	}
	if !opts.InMemory {
		if err := flushLargerMemtables(dir, mt, opts); err != nil {
			return nil, err
		}
	}
	db, err := badgerdir.Open(badgerOptions(dir, mt, opts))
	if errors.Is(err, badgerdir.ErrDamaged) {
		return nil, damaged(err)
	}
	if err != nil {
		return nil, fmt.Errorf("relay: open store %s: %w", dir, err)
	}
	return db, nil
}

// memTableSize is the relay's Badger memtable: small, because memtables
// are most of what an idle relay's heap holds (each one an arena of
// about 1.3 times this, allocated whole), and the Go heap goal doubles
// what is live. Badger refuses a transaction past 15% of a memtable
// (1.2 MiB here); Append writes larger appends in several transactions
// without readers seeing them in part (see appendSplit), and every single
// value fits one: values under Badger's value threshold (1 MiB, the most
// a log entry or snapshot under the default max_record weighs) count in
// full, larger ones go to the value log and count as a pointer.
const memTableSize = 8 << 20

// badgerOptions are the Badger options of a relay store with memtables of
// mt bytes.
func badgerOptions(dir string, mt int64, opts Options) badger.Options {
	bo := badger.DefaultOptions(dir).
		WithInMemory(opts.InMemory).
		// The store fsyncs its logs itself (see Store).
		WithSyncWrites(false).
		WithLogger(badgerdir.Logger(opts.Logger)).
		WithNumVersionsToKeep(1).
		WithMemTableSize(mt).
		// Values a transaction cannot hold go to the value log, however
		// small the memtable (tests shrink it).
		WithValueThreshold(min(1<<20, mt/8)).
		// One memtable being written and up to two waiting for their
		// flush: a few MiB each, written to disk as level-0 tables.
		WithNumMemtables(3).
		// The block cache only speeds reads of older documents and log
		// entries; the operating system's page cache holds the files too.
		WithBlockCacheSize(16 << 20)
	if opts.InMemory {
		bo.Dir, bo.ValueDir = "", ""
	}
	if opts.valueLogFileSize > 0 {
		bo = bo.WithValueLogFileSize(opts.valueLogFileSize)
	}
	return bo
}

// flushLargerMemtables opens the store in dir once with memtables large
// enough for the memtable logs it holds, if one was written with larger
// memtables than mt (by an older Ferry, which used 64 MiB, that stopped
// without closing the store), and closes it: closing flushes them to
// tables. Replayed into a smaller memtable, such a log would overflow it.
func flushLargerMemtables(dir string, mt int64, opts Options) error {
	files, err := os.ReadDir(dir)
	if err != nil {
		return nil // no store yet; Prepare created the folder or the open reports it
	}
	need := mt
	for _, f := range files {
		if !strings.HasSuffix(f.Name(), ".mem") {
			continue
		}
		// Badger creates a memtable's log at twice the memtable's size.
		if info, err := f.Info(); err == nil {
			need = max(need, info.Size()/2)
		}
	}
	if need == mt {
		return nil
	}
	db, err := badgerdir.Open(badgerOptions(dir, need, opts))
	if errors.Is(err, badgerdir.ErrDamaged) {
		return damaged(err)
	}
	if err != nil {
		return fmt.Errorf("relay: open store %s: %w", dir, err)
	}
	if err := badgerdir.Close(db); err != nil {
		return fmt.Errorf("relay: open store %s: flushing its memtables: %w", dir, err)
	}
	return nil
}

// marker is what makes a Badger database a relay store.
var marker = badgerdir.Marker{
	Kind: "relay", FormatKey: keyFormat, IDKey: keyIncarnation, Format: badgerFormat,
	NewID: uuid.NewString, NotStore: relay.ErrNotRelayStore, Newer: relay.ErrNewerStoreFormat,
}

// initMeta checks the format version and returns the incarnation, writing
// both into a new (keyless) database, and migrates an older format; sync
// fsyncs what was written.
func initMeta(db *badger.DB, sync func() error) (string, error) {
	inc, format, err := marker.Init(db)
	if err == nil && format < badgerFormat {
		err = migrateV1(db, sync)
	}
	return inc, err
}

// Incarnation implements relay.Store.
func (s *Store) Incarnation() string { return s.incarnation }

// enter guards an operation against a concurrent Close.
func (s *Store) enter(ctx context.Context) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, relay.ErrStoreClosed
	}
	return s.mu.RUnlock, nil
}

// update runs fn in one read-write transaction under c's lock: everything fn
// reads is what it writes over, and the commit is durable unless Relaxed.
func (s *Store) update(ctx context.Context, c relay.Coll, fn func(txn *badger.Txn) error) error {
	return s.locked(ctx, c, func() error { return s.commitUpdate(c, fn) })
}

// commitUpdate runs fn in a read-write transaction and commits it, as
// DB.Update does, marking c unsynced first. The caller holds c's lock, or
// is Open.
func (s *Store) commitUpdate(c relay.Coll, fn func(txn *badger.Txn) error) error {
	txn := s.db.NewTransaction(true)
	defer txn.Discard()
	if err := fn(txn); err != nil {
		return err
	}
	return s.commit(c, txn)
}

// commit commits txn, a write to c, marking c unsynced first: readers may
// see the commit as soon as Badger has written it.
func (s *Store) commit(c relay.Coll, txn *badger.Txn) error {
	if !s.fsync.Off() {
		s.unsynced[s.colls.Index(c)].Store(true)
	}
	return txn.Commit()
}

// syncPart fsyncs the transactions of a write to c in several so far,
// before it commits one that must not survive a power loss without them.
func (s *Store) syncPart() error {
	if err := s.fsync.Sync(); err != nil {
		return fmt.Errorf("relay: fsync: %w", err)
	}
	return nil
}

// locked runs fn under c's lock, once what a failed append to c left is
// cleared: every write to a collection goes through it. What fn committed,
// even if it then failed, is fsynced before the lock is let go.
func (s *Store) locked(ctx context.Context, c relay.Coll, fn func() error) error {
	done, err := s.enter(ctx)
	if err != nil {
		return err
	}
	defer done()
	defer s.colls.Lock(c)()
	err = s.clearMarked(c)
	if err == nil {
		err = fn()
	}
	unsynced := &s.unsynced[s.colls.Index(c)]
	if !unsynced.Load() {
		return err
	}
	if serr := s.fsync.Sync(); serr != nil {
		// Left marked: readers of c's sequence numbers try again.
		if err == nil {
			err = fmt.Errorf("relay: written but not fsynced: %w", serr)
		}
		return err
	}
	unsynced.Store(false)
	return err
}

func (s *Store) view(ctx context.Context, fn func(txn *badger.Txn) error) error {
	done, err := s.enter(ctx)
	if err != nil {
		return err
	}
	defer done()
	return s.db.View(fn)
}

// viewDurable is view for reads of c that give out sequence numbers: if
// a write to c (or to a collection sharing its stripe) was committed and
// not yet fsynced once fn's transaction had begun, it waits for that
// write's fsync, which comes before the write lets go of the lock; if that
// fsync failed, it fsyncs, or fails.
func (s *Store) viewDurable(ctx context.Context, c relay.Coll, fn func(txn *badger.Txn) error) error {
	done, err := s.enter(ctx)
	if err != nil {
		return err
	}
	defer done()
	if err := s.db.View(fn); err != nil {
		return err
	}
	unsynced := &s.unsynced[s.colls.Index(c)]
	if !unsynced.Load() || s.readsInHook {
		return nil
	}
	defer s.colls.RLock(c)()
	if !unsynced.Load() {
		return nil
	}
	if err := s.fsync.Sync(); err != nil {
		return fmt.Errorf("relay: read of %s/%s: an earlier write was not fsynced: %w", c.Tenant, c.Collection, err)
	}
	// No writer holds the stripe: only readers, who may all clear it.
	unsynced.Store(false)
	return nil
}

// Acquire implements relay.Store. The collection's fence key only grows, and is
// written in the same transaction as the lease it numbers.
func (s *Store) Acquire(ctx context.Context, c relay.Coll, holder string, ttl time.Duration, now time.Time) (relay.Lease, error) {
	if err := relay.CheckColl(c); err != nil {
		return relay.Lease{}, err
	}
	if err := relay.CheckLease(holder, ttl); err != nil {
		return relay.Lease{}, err
	}
	var l relay.Lease
	err := s.update(ctx, c, func(txn *badger.Txn) error {
		cur, ok, err := getLease(txn, c)
		if err != nil {
			return err
		}
		if ok && cur.Live(now) && cur.Holder != holder {
			return &relay.LeaseHeldError{Lease: cur}
		}
		last, err := getUint64(txn, collKey("fence", c))
		if err != nil {
			return err
		}
		l = relay.Lease{Holder: holder, Fence: last + 1, Expires: now.Add(ttl)}
		if err := putUint64(txn, collKey("fence", c), l.Fence); err != nil {
			return err
		}
		return txn.Set(collKey("lease", c), encodeLease(l))
	})
	if err != nil {
		return relay.Lease{}, err
	}
	return l, nil
}

// Renew implements relay.Store.
func (s *Store) Renew(ctx context.Context, c relay.Coll, holder string, fence uint64, ttl time.Duration, now time.Time) (relay.Lease, error) {
	if err := relay.CheckLease(holder, ttl); err != nil {
		return relay.Lease{}, err
	}
	var l relay.Lease
	err := s.update(ctx, c, func(txn *badger.Txn) error {
		cur, ok, err := getLease(txn, c)
		if err != nil {
			return err
		}
		if !ok || cur.Fence != fence || !cur.Live(now) {
			return fmt.Errorf("renew lease of %s/%s with fence %d: %w", c.Tenant, c.Collection, fence, relay.ErrStaleFence)
		}
		if cur.Holder != holder {
			return fmt.Errorf("renew lease of %s/%s with fence %d: held by another holder: %w", c.Tenant, c.Collection, fence, relay.ErrStaleFence)
		}
		l = relay.Lease{Holder: cur.Holder, Fence: fence, Expires: now.Add(ttl)}
		return txn.Set(collKey("lease", c), encodeLease(l))
	})
	if err != nil {
		return relay.Lease{}, err
	}
	return l, nil
}

// Release implements relay.Store.
func (s *Store) Release(ctx context.Context, c relay.Coll, holder string, fence uint64) error {
	if err := relay.CheckName("holder", holder); err != nil {
		return err
	}
	return s.update(ctx, c, func(txn *badger.Txn) error {
		cur, ok, err := getLease(txn, c)
		if err != nil || !ok || cur.Fence != fence {
			return err
		}
		if cur.Holder != holder {
			return fmt.Errorf("release lease of %s/%s with fence %d: held by another holder: %w", c.Tenant, c.Collection, fence, relay.ErrStaleFence)
		}
		return txn.Delete(collKey("lease", c))
	})
}

// Close waits for in-flight calls, stops the value-log GC, and closes the
// database. It is safe to call more than once; later calls return the first
// call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.wg.Wait()
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.closeErr = errors.Join(badgerdir.Close(s.db), s.fsync.Close())
	})
	return s.closeErr
}
