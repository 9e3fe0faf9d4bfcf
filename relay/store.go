package relay

import (
	"context"
	"errors"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// Store is the relay's durable state: per tenant and collection, an
// append-only log of accepted changes, each record's current document, and
// the collection's lease. The Badger store is the embedded default; a store
// shared by several relay processes (PostgreSQL) implements the same
// contract, which relay/storetest checks.
//
// Every method is safe for concurrent use. A method that returns nil has
// made its writes durable.
type Store interface {
	// Incarnation identifies this copy of the store's data. It is fixed when
	// the store is created and changes when the data is restored from a
	// backup (see RestoreBadgerStore), so devices can tell that cursors and
	// acknowledged heads they hold may not match the log any more.
	Incarnation() string

	// Append commits one push to a collection, all or nothing:
	//
	//   - If fence is non-zero it must equal the fence of the collection's
	//     lease, held and unexpired at now; otherwise ErrStaleFence. The
	//     check and the append are one atomic step, so a holder whose lease
	//     was taken over can never append after the new holder.
	//   - Each entry's Base must equal the heads of the record's stored
	//     document (nil for a record the store does not hold); otherwise
	//     ErrConflict and nothing is written. This is how concurrent pushes
	//     to one record, possibly through different relay processes, are
	//     serialized: the loser reloads the document and merges again.
	//   - Each entry gets the next sequence number of the collection's log
	//     (1, 2, 3, ...; never reused, even across crashes), and its Doc
	//     replaces the record's document.
	//
	// It returns the sequence number of the last entry (the collection's log
	// head). Entries with no Changes are not allowed.
	Append(ctx context.Context, c Coll, fence uint64, now time.Time, entries []Entry) (uint64, error)

	// Document returns a record's stored document and its heads, or
	// ErrNotFound.
	Document(ctx context.Context, c Coll, record string) (doc []byte, heads crdt.Heads, err error)

	// Log returns the entries with sequence numbers above after, in order,
	// at most limit of them.
	Log(ctx context.Context, c Coll, after uint64, limit int) ([]LogEntry, error)

	// Head returns the collection's last sequence number (0 when empty).
	Head(ctx context.Context, c Coll) (uint64, error)

	// Snapshots returns records' documents in record ID order, starting
	// after the record ID after ("" for the first), at most limit of them.
	// Fresh devices are sent these instead of the whole log.
	Snapshots(ctx context.Context, c Coll, after string, limit int) ([]Snapshot, error)

	// Acquire takes the collection's lease for holder until now+ttl, with a
	// fence number higher than any the collection has had (fences survive
	// restarts). If another holder's lease is unexpired at now it returns
	// ErrLeaseHeld with that lease. A holder that re-acquires its own
	// unexpired lease gets a new, higher fence.
	Acquire(ctx context.Context, c Coll, holder string, ttl time.Duration, now time.Time) (Lease, error)

	// Renew extends holder's lease with this fence to now+ttl. ErrStaleFence
	// if the lease has expired, another fence holds it, or the lease with
	// this fence is another holder's: a fence alone, which anyone could
	// guess, never extends a lease.
	Renew(ctx context.Context, c Coll, holder string, fence uint64, ttl time.Duration, now time.Time) (Lease, error)

	// Release gives up holder's lease with this fence. Releasing a lease
	// that has expired or been superseded is not an error: the effect is
	// the same. If the current lease has this fence but another holder,
	// Release returns ErrStaleFence and leaves the lease as it is.
	Release(ctx context.Context, c Coll, holder string, fence uint64) error

	// Stats reports the store's size, for metrics.
	Stats(ctx context.Context) (StoreStats, error)

	// Close releases the store. Calls after Close return ErrStoreClosed.
	Close() error
}

// Coll names one tenant's collection.
type Coll struct {
	Tenant     string // the app
	Collection string
}

// Entry is one record's accepted changes in an Append.
type Entry struct {
	Record  string
	Base    crdt.Heads // the stored document's heads this push was merged onto
	Changes []byte     // the Automerge changes new to the relay
	Hashes  []crdt.Hash
	Doc     []byte     // the record's document after the changes (Automerge save format)
	Heads   crdt.Heads // the document's heads after the changes
}

// LogEntry is one entry of a collection's log.
type LogEntry struct {
	Seq     uint64
	Record  string
	Changes []byte
	Heads   crdt.Heads // the record's heads after this entry
}

// Snapshot is a record's whole document.
type Snapshot struct {
	Record string
	Doc    []byte
	Heads  crdt.Heads
	Seq    uint64 // sequence number of the last log entry the document includes
}

// Lease is a collection's lease: while it is live, only its holder syncs
// the collection, and its fence numbers the holder's writes.
type Lease struct {
	Holder  string
	Fence   uint64
	Expires time.Time
}

// StoreStats sizes a store.
type StoreStats struct {
	LogEntries int64 // entries in all logs
	Bytes      int64 // approximate bytes on disk (or in memory)
}

var (
	// ErrStaleFence means a fence is not the collection's current lease.
	ErrStaleFence = errors.New("relay: stale lease fence")
	// ErrLeaseHeld means another holder has the lease.
	ErrLeaseHeld = errors.New("relay: lease held by another")
	// ErrConflict means a record's document changed since the push read it.
	ErrConflict = errors.New("relay: record changed concurrently")
	// ErrNotFound means the store holds no such record.
	ErrNotFound = errors.New("relay: not found")
	// ErrStoreClosed means the store has been closed.
	ErrStoreClosed = errors.New("relay: store closed")
)
