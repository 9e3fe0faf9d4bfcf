package replica

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
	"github.com/google/uuid"

	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/transport"
)

// Replica is one device's copy of its data. It is safe for concurrent use by
// many goroutines: reads of a record wait only for a write to the same
// record, and writes to different records commit in parallel. Syncs of one
// profile run one at a time (a live profile pushes fresh edits beside
// them), of different profiles at once; the callbacks
// in Options each say from which goroutines they are called. Close stops
// and waits for every goroutine the replica started.
type Replica struct {
	db    *badger.DB
	id    string                 // stable: the relay's name for this device
	actor atomic.Pointer[string] // the Automerge actor ID new changes are made as; see newActor
	opts  Options
	log   *slog.Logger

	locks stripes   // per record
	colls collLocks // per collection, for exchanges with relays
	cache *docCache
	reap  *reaper           // frees the documents that leave the cache
	fsync *badgerdir.Syncer // fsyncs what durable commits need
	feeds *feeds
	idx   indexes               // the collections' secondary indexes
	mem   *native               // releases the memory automerge-go leaves behind
	pages *badgerdir.TablePages // drops Badger's table pages from resident memory
	pres  *presence             // in memory only

	early earlyPushes // live sessions pushing local edits before their fsync

	unpace func() // ends this replica's part in pacing Go's collector (gcpace.go)

	closeOnce sync.Once
	closeErr  error
	closing   chan struct{}
	closeCtx  context.Context // ends at Close, for syncs in flight
	stopAll   context.CancelFunc
	sched     *scheduler
	net       network        // the device's network, as the app reports it
	status    statuses       // each profile's sync status
	wg        sync.WaitGroup // background goroutines
	ending    endings        // connections finishing after their sync returned (syncconn.go)
	mu        sync.RWMutex   // held for reading by every operation; Close takes it for writing
	closed    bool

	// pushFault, if set (by tests, before any sync starts), is asked
	// before each push is sent; an error it returns stands for the
	// relay's answer.
	pushFault func(*transport.Push) error
}

// Open opens the replica stored in dir, creating it (and dir) if absent.
// dir must be empty, missing, or a Ferry store: anything else gives
// ErrNotStore without touching it. A store written by a newer Ferry gives
// ErrNewerFormat. A damaged store (a file missing, cut short or failing its
// checksums) gives ErrDamaged, again without touching it; Open never
// deletes a file that may hold data.
func Open(dir string, o *Options) (*Replica, error) {
	opts := o.withDefaults()
	// Paced from the start: verifying the store's tables and replaying
	// its logs allocate in bursts too.
	unpace := pacer.start(opts.MemoryHeadroom)
	r, err := openStore(dir, opts)
	if err != nil {
		unpace()
		return nil, err
	}
	r.unpace = unpace
	return r, nil
}

// openStore is Open, paced by its caller.
func openStore(dir string, opts Options) (*Replica, error) {
	if !opts.InMemory {
		if err := checkDir(dir); err != nil {
			return nil, err
		}
	}
	mt := opts.memTableSize
	if mt == 0 {
		mt = memTableSize
		if opts.InMemory {
			// Badger counts every value in full against a transaction
			// in memory (it has no value log): keep the transactions
			// that fit what they were, a document and a read model each
			// near max_record.
			mt = 16 << 20
		}
	}
	if !opts.InMemory {
		if err := flushLargerMemtables(dir, mt, opts); err != nil {
			return nil, err
		}
	}
	bo := storeOptions(dir, mt, opts)
	db, err := badgerdir.Open(bo)
	if errors.Is(err, badgerdir.ErrDamaged) {
		return nil, damaged(err)
	}
	if err != nil {
		return nil, fmt.Errorf("ferry: open store %s: %w", dir, err)
	}
	r := &Replica{
		db:      db,
		opts:    opts,
		log:     opts.Logger,
		feeds:   newFeeds(),
		pres:    newPresence(opts.Clock, opts.PresenceHeartbeat),
		closing: make(chan struct{}),
	}
	if opts.InMemory {
		dir = ""
	}
	r.fsync = badgerdir.NewSyncer(db, dir, opts.Relaxed)
	r.reap = newReaper(&r.locks)
	r.cache = newDocCache(opts.CacheBytes, r.reap.add)
	r.reap.cache = r.cache
	go r.reap.run()
	r.mem = newNative()
	r.pages = badgerdir.NewTablePages(db, dir)
	r.mem.pages = r.releasePages
	r.closeCtx, r.stopAll = context.WithCancel(context.Background())
	r.sched = newScheduler(r)
	// The actor comes first: upgrading a store loads documents.
	r.newActor()
	var format uint32
	r.id, format, err = r.initMeta()
	if err == nil {
		err = r.loadIndexes()
	}
	if err == nil && format < formatVersion {
		err = r.upgrade(format)
	}
	if err == nil {
		// A new store's identity, and whatever an earlier run left
		// unsynced, become durable.
		err = r.durable(nil)
	}
	if err != nil {
		r.reap.close()
		badgerdir.Close(db)
		r.fsync.Close()
		return nil, err
	}
	if !opts.InMemory && opts.GCInterval > 0 {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			badgerdir.GC(db, opts.GCInterval, r.closing, r.log)
		}()
	}
	if err := r.sched.startAll(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// A device store's Badger memory. What Badger keeps on the Go heap while
// writing is its memtables (an arena of about 1.3 times memTableSize
// each, the one being written and the one being flushed) and the tables
// it builds in memory before writing them, one from each full memtable
// among them; a store closed with a full memtable builds one as it
// closes. Halving the memtables (from 16 MiB) took 12 MiB off the Go
// heap at W6's insert's peak and a sixth off its close and reopen's
// peak; what it costs is a smaller transaction (Badger refuses one past
// 15% of a memtable, 1.2 MiB here), which the store splits where it may
// (see batchParts), and a lower value threshold (see txnlimit.go).
const memTableSize = 8 << 20

// storeOptions are a replica store's Badger options, with memtables of
// mt bytes.
func storeOptions(dir string, mt int64, opts Options) badger.Options {
	// Commits are fsynced only where durability needs it: see durable.go.
	bo := badger.DefaultOptions(dir).
		WithInMemory(opts.InMemory).
		WithSyncWrites(false).
		WithLogger(badgerdir.Logger(opts.Logger)).
		// Two memtables bound them to the one being written and one
		// being flushed (writes wait for the flush rather than queue
		// more), and two compactors (Badger's least) bound the tables
		// built at once. Blocks are cached decompressed on the Go heap:
		// reads go through the records' read models, a few hundred
		// bytes each, and a scan reads each block once, so 8 MiB (2,000
		// blocks) keeps what Gets reread; 32 MiB held 24 MiB more
		// through every phase after a scan, and the heap's collections
		// doubled it.
		WithMemTableSize(mt).
		WithNumMemtables(2).
		WithNumCompactors(2).
		WithBlockCacheSize(8 << 20).
		WithNumVersionsToKeep(1)
	if opts.InMemory {
		bo.Dir, bo.ValueDir = "", ""
	}
	// The value threshold follows from the memtable: see txnlimit.go.
	return bo.WithValueThreshold(valueThreshold(bo))
}

// flushLargerMemtables opens the store in dir once with memtables large
// enough for the memtable logs it holds, if one was written with larger
// memtables than mt (by an older Ferry, whose memtables were of 16 MiB,
// that stopped without closing the store), and closes it: closing
// flushes them to tables. Replayed into a smaller memtable, such a log
// would overflow it, and the store would not open.
func flushLargerMemtables(dir string, mt int64, opts Options) error {
	need := max(mt, badgerdir.MemtableLogNeeds(dir))
	if need == mt {
		return nil
	}
	db, err := badgerdir.Open(storeOptions(dir, need, opts))
	if errors.Is(err, badgerdir.ErrDamaged) {
		return damaged(err)
	}
	if err != nil {
		return fmt.Errorf("ferry: open store %s: %w", dir, err)
	}
	if err := badgerdir.Close(db); err != nil {
		return fmt.Errorf("ferry: open store %s: flushing its memtables: %w", dir, err)
	}
	return nil
}

// checkDir refuses a folder with files that are not a Badger store, before
// Badger would create its own files beside them, refuses a damaged store,
// and repairs what a crash during an earlier open left (see
// badgerdir.Prepare).
func checkDir(dir string) error {
	_, err := badgerdir.Prepare(dir)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, badgerdir.ErrForeign):
		return fmt.Errorf("%w: %w", ErrNotStore, err)
	case errors.Is(err, badgerdir.ErrDamaged):
		return damaged(err)
	}
	return fmt.Errorf("ferry: open store: %w", err)
}

// damaged puts a badgerdir.ErrDamaged under ErrDamaged, with what the user
// can do about it.
func damaged(err error) error {
	return fmt.Errorf("%w: %w. Move the folder aside and open a new replica in its place to sync again, or put back a copy from a backup", ErrDamaged, err)
}

// marker is what makes a Badger database a replica's store. A replica ID
// is 16 random bytes in hex, unique per device.
var marker = badgerdir.Marker{
	Kind: "Ferry", FormatKey: keyFormat, IDKey: keyID, Format: formatVersion,
	NewID:    func() string { u := uuid.New(); return fmt.Sprintf("%x", u[:]) },
	NotStore: ErrNotStore, Newer: ErrNewerFormat,
}

// initMeta checks the format version and returns the replica ID, writing
// both on a new store.
func (r *Replica) initMeta() (string, uint32, error) {
	id, format, err := marker.Init(r.db)
	if err != nil {
		return "", 0, fmt.Errorf("ferry: open store: %w", err)
	}
	return id, format, nil
}

// upgrade brings a store of an older format to the current one, then
// records the new format, which an older Ferry refuses. From format 1 it
// builds the read model of every record that has none (an older Ferry
// would write records without read models): about as long as reading
// every record once did before read models. From format 2 it cuts index
// entries longer than indexValueBound (see cutIndexEntries), which an
// older Ferry would take for stale ones. A crash half-way upgrades again
// at the next open; what was done before it stays, as nothing else wrote
// meanwhile.
func (r *Replica) upgrade(format uint32) error {
	if format < 2 {
		if err := r.buildViews(); err != nil {
			return err
		}
	}
	if err := r.cutIndexEntries(); err != nil {
		return fmt.Errorf("ferry: open store: cutting long index entries: %w", err)
	}
	return r.db.Update(func(txn *badger.Txn) error {
		return txn.Set(keyFormat, binary.BigEndian.AppendUint32(nil, formatVersion))
	})
}

// buildViews builds the read model of every record that has none.
func (r *Replica) buildViews() error {
	colls, err := r.Collections()
	if err != nil {
		return err
	}
	for _, coll := range colls {
		ids, err := r.recordIDs(coll)
		if err != nil {
			return err
		}
		for _, id := range ids {
			var ok bool
			err := r.view(func(txn *badger.Txn) (err error) {
				_, ok, err = readView(txn, coll, id)
				return err
			})
			if err == nil && !ok {
				_, err = r.rebuildView(coll, id)
			}
			if err != nil && !errors.Is(err, ErrCorrupt) {
				// A damaged record keeps no read model; reading it
				// reports it, as it did.
				return fmt.Errorf("ferry: open store: building read models: %w", err)
			}
		}
	}
	return nil
}

// ID returns the replica's stable ID: the name the relay knows this device
// by (lease holder, logs). It is not the Automerge actor of its edits; see
// newActor.
func (r *Replica) ID() string { return r.id }

// newActor gives the replica a fresh Automerge actor ID, for one open of
// the store, and again whenever a refresh from the relay discards changes
// (see refresh.go).
//
// Automerge numbers each actor's changes 1, 2, 3 per document and refuses a
// second, different change with a number it already holds. A store that is
// copied (a device image cloned, a folder backed up and restored) would
// otherwise go on writing as the same actor on two devices, or write again
// numbers it had already sent before the backup, and the relay would refuse
// every later change of those records forever. An actor per open can never
// be reused: each open, copy or restore writes as a new actor, at the cost
// of 16 bytes per actor in the documents it edits.
func (r *Replica) newActor() {
	u := uuid.New()
	a := fmt.Sprintf("%x", u[:])
	r.actor.Store(&a)
}

// actorID returns the actor new changes are made as.
func (r *Replica) actorID() string { return *r.actor.Load() }

// Close waits for in-flight operations, stops background work, and closes
// the store. It is safe to call more than once; later calls return the
// first call's result.
func (r *Replica) Close() error {
	r.closeOnce.Do(func() {
		close(r.closing)
		r.stopAll()
		r.sched.close()
		r.ending.wait()
		r.wg.Wait()
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		r.feeds.closeAll(ErrClosed)
		r.pres.close()
		// No operation runs now: free every loaded document.
		r.cache.clear()
		r.reap.close()
		r.pages.Stop()
		r.closeErr = errors.Join(r.durable(nil), badgerdir.Close(r.db), r.fsync.Close())
		// Badger's memtables, block cache and the tables its close
		// built are garbage now, tens of MB: collected here, a store
		// opened next in this process (an app reopening, a restore)
		// does not grow the heap on top of them before Go collects.
		r.mem.collect()
		if r.unpace != nil {
			r.unpace()
		}
	})
	return r.closeErr
}

// releasePages drops the store's table pages from the process's resident
// memory (see badgerdir.TablePages): Badger maps every table whole, and
// each table written or read would otherwise stay resident, which grows
// with the store (some 30 MiB of a process's RSS at 100,000 small
// records, a quarter of it). It runs with the periodic releases of
// native memory, on the writer that crossed the mark, after its unit's
// locks are released; the pages stay in the page cache, so reading one
// again costs a minor fault and no disk read. Close stops it before it
// closes the store, which unmaps the tables.
func (r *Replica) releasePages() {
	if _, err := r.pages.Release(); err != nil {
		r.log.Debug("ferry: releasing the store's table pages", "err", err)
	}
}

// view and update run fn in a read or read-write transaction, fenced
// against Close like every store call.
func (r *Replica) view(fn func(txn *badger.Txn) error) error {
	release, err := r.enter()
	if err != nil {
		return err
	}
	defer release()
	return r.db.View(fn)
}

func (r *Replica) update(fn func(txn *badger.Txn) error) error {
	release, err := r.enter()
	if err != nil {
		return err
	}
	defer release()
	return r.db.Update(fn)
}

// enter guards an operation against a concurrent Close.
func (r *Replica) enter() (func(), error) {
	r.mu.RLock()
	if r.closed {
		r.mu.RUnlock()
		return nil, ErrClosed
	}
	return r.mu.RUnlock, nil
}
