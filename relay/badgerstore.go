package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/internal/stripe"
	"github.com/google/uuid"
)

// BadgerOptions configure a BadgerStore. A nil *BadgerOptions is valid and
// means the defaults; OpenBadgerStore never modifies it.
type BadgerOptions struct {
	// Logger receives the store's and Badger's logs. Default: discard.
	Logger *slog.Logger

	// Relaxed turns off fsync on every commit (Badger's SyncWrites), for
	// benchmarks only: an Append that returned nil, and so was acknowledged
	// to a device, may be lost in a power loss or kernel crash.
	Relaxed bool

	// InMemory keeps everything in memory: nothing survives Close. The dir
	// argument of OpenBadgerStore is ignored.
	InMemory bool

	// GCInterval is how often Badger's value log is garbage-collected in
	// the background. Default 10 minutes; negative disables it.
	GCInterval time.Duration
}

func (o *BadgerOptions) withDefaults() BadgerOptions {
	var v BadgerOptions
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

// BadgerStore is the relay's embedded Store: one Badger database in a data
// folder, holding every tenant. Every method is safe for concurrent use.
// Writes to one collection are serialized by an in-process lock (one process
// owns a Badger folder; Badger's own folder lock enforces it), so sequence
// numbers are allocated without races; writes to different collections
// commit in parallel.
type BadgerStore struct {
	db          *badger.DB
	incarnation string
	opts        BadgerOptions

	// colls serializes writes per collection. Striped, so memory stays
	// bounded however many collections there are; two collections sharing
	// a stripe only wait for each other.
	colls stripe.Locks[Coll]

	mu     sync.RWMutex // held for reading by every operation; Close takes it for writing
	closed bool

	closeOnce sync.Once
	closeErr  error
	closing   chan struct{}
	wg        sync.WaitGroup // background goroutines
}

var _ Store = (*BadgerStore)(nil)

// OpenBadgerStore opens the relay store in dir, creating it (and dir) if
// absent. dir must be missing, empty, or a relay store: a folder with other
// files gives ErrNotRelayStore, a store written by a newer Ferry gives
// ErrNewerStoreFormat, and a damaged store (a file missing, cut short or
// failing its checksums) gives ErrStoreDamaged, in each case without
// writing anything to it or deleting anything from it.
func OpenBadgerStore(dir string, o *BadgerOptions) (*BadgerStore, error) {
	opts := o.withDefaults()
	db, err := openBadger(dir, opts)
	if err != nil {
		return nil, err
	}
	s := &BadgerStore{db: db, opts: opts, closing: make(chan struct{})}
	if s.incarnation, err = initMeta(db); err != nil {
		badgerdir.Close(db)
		return nil, fmt.Errorf("relay: open store %s: %w", dir, err)
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

func openBadger(dir string, opts BadgerOptions) (*badger.DB, error) {
	if !opts.InMemory {
		if err := checkStoreDir(dir); err != nil {
			return nil, err
		}
	}
	bo := badger.DefaultOptions(dir).
		WithInMemory(opts.InMemory).
		WithSyncWrites(!opts.Relaxed).
		WithLogger(badgerdir.Logger(opts.Logger)).
		WithNumVersionsToKeep(1).
		// Memtables stay 64 MiB, Badger's default: a push's documents and
		// changes must fit one transaction (about 15% of a memtable), and
		// a push may fill a 4 MiB frame. The block cache only speeds reads
		// of older documents; 64 MiB instead of 256 keeps memory down.
		WithBlockCacheSize(64 << 20)
	if opts.InMemory {
		bo.Dir, bo.ValueDir = "", ""
	}
	db, err := badgerdir.Open(bo)
	if errors.Is(err, badgerdir.ErrDamaged) {
		return nil, damaged(err)
	}
	if err != nil {
		return nil, fmt.Errorf("relay: open store %s: %w", dir, err)
	}
	return db, nil
}

// marker is what makes a Badger database a relay store.
var marker = badgerdir.Marker{
	Kind: "relay", FormatKey: keyFormat, IDKey: keyIncarnation, Format: badgerFormat,
	NewID: uuid.NewString, NotStore: ErrNotRelayStore, Newer: ErrNewerStoreFormat,
}

// initMeta checks the format version and returns the incarnation, writing
// both into a new (keyless) database, and migrates an older format.
func initMeta(db *badger.DB) (string, error) {
	inc, format, err := marker.Init(db)
	if err == nil && format < badgerFormat {
		err = migrateV1(db)
	}
	return inc, err
}

// Incarnation implements Store.
func (s *BadgerStore) Incarnation() string { return s.incarnation }

// enter guards an operation against a concurrent Close.
func (s *BadgerStore) enter(ctx context.Context) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, ErrStoreClosed
	}
	return s.mu.RUnlock, nil
}

// update runs fn in one read-write transaction under c's lock: everything fn
// reads is what it writes over, and the commit is durable unless Relaxed.
func (s *BadgerStore) update(ctx context.Context, c Coll, fn func(txn *badger.Txn) error) error {
	done, err := s.enter(ctx)
	if err != nil {
		return err
	}
	defer done()
	defer s.colls.Lock(c)()
	return s.db.Update(fn)
}

func (s *BadgerStore) view(ctx context.Context, fn func(txn *badger.Txn) error) error {
	done, err := s.enter(ctx)
	if err != nil {
		return err
	}
	defer done()
	return s.db.View(fn)
}

// Acquire implements Store. The collection's fence key only grows, and is
// written in the same transaction as the lease it numbers.
func (s *BadgerStore) Acquire(ctx context.Context, c Coll, holder string, ttl time.Duration, now time.Time) (Lease, error) {
	if err := checkColl(c); err != nil {
		return Lease{}, err
	}
	if err := checkLeaseArgs(holder, ttl); err != nil {
		return Lease{}, err
	}
	var l Lease
	err := s.update(ctx, c, func(txn *badger.Txn) error {
		cur, ok, err := getLease(txn, c)
		if err != nil {
			return err
		}
		if ok && leaseLive(cur, now) && cur.Holder != holder {
			return &LeaseHeldError{Lease: cur}
		}
		last, err := getUint64(txn, collKey("fence", c))
		if err != nil {
			return err
		}
		l = Lease{Holder: holder, Fence: last + 1, Expires: now.Add(ttl)}
		if err := putUint64(txn, collKey("fence", c), l.Fence); err != nil {
			return err
		}
		return txn.Set(collKey("lease", c), encodeLease(l))
	})
	if err != nil {
		return Lease{}, err
	}
	return l, nil
}

// Renew implements Store.
func (s *BadgerStore) Renew(ctx context.Context, c Coll, holder string, fence uint64, ttl time.Duration, now time.Time) (Lease, error) {
	if err := checkLeaseArgs(holder, ttl); err != nil {
		return Lease{}, err
	}
	var l Lease
	err := s.update(ctx, c, func(txn *badger.Txn) error {
		cur, ok, err := getLease(txn, c)
		if err != nil {
			return err
		}
		if !ok || cur.Fence != fence || !leaseLive(cur, now) {
			return fmt.Errorf("renew lease of %s/%s with fence %d: %w", c.Tenant, c.Collection, fence, ErrStaleFence)
		}
		if cur.Holder != holder {
			return fmt.Errorf("renew lease of %s/%s with fence %d: held by another holder: %w", c.Tenant, c.Collection, fence, ErrStaleFence)
		}
		l = Lease{Holder: cur.Holder, Fence: fence, Expires: now.Add(ttl)}
		return txn.Set(collKey("lease", c), encodeLease(l))
	})
	if err != nil {
		return Lease{}, err
	}
	return l, nil
}

// Release implements Store.
func (s *BadgerStore) Release(ctx context.Context, c Coll, holder string, fence uint64) error {
	if err := checkName("holder", holder); err != nil {
		return err
	}
	return s.update(ctx, c, func(txn *badger.Txn) error {
		cur, ok, err := getLease(txn, c)
		if err != nil || !ok || cur.Fence != fence {
			return err
		}
		if cur.Holder != holder {
			return fmt.Errorf("release lease of %s/%s with fence %d: held by another holder: %w", c.Tenant, c.Collection, fence, ErrStaleFence)
		}
		return txn.Delete(collKey("lease", c))
	})
}

// Close waits for in-flight calls, stops the value-log GC, and closes the
// database. It is safe to call more than once; later calls return the first
// call's result.
func (s *BadgerStore) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.wg.Wait()
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.closeErr = badgerdir.Close(s.db)
	})
	return s.closeErr
}
