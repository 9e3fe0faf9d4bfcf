package relay

import (
	"context"
	"errors"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// Store is the relay's durable state: per tenant and collection, an
// append-only log of accepted changes, each record stored as a snapshot
// plus the changes after it (its tail), and the collection's lease. A push
// stores only what it adds: its changes. The Badger store is the embedded
// default; a store shared by several relay processes (PostgreSQL)
// implements the same contract, which relay/storetest checks.
//
// Every method is safe for concurrent use. A method that returns nil has
// made its writes durable.
type Store interface {
	// Incarnation identifies this copy of the store's data. It is fixed when
	// the store is created and changes when the data is restored from a
	// backup (see badgerstore.Restore), so devices can tell that cursors and
	// acknowledged heads they hold may not match the log any more.
	Incarnation() string

	// Append commits one push to a collection, all or nothing:
	//
	//   - If fence is non-zero it must equal the fence of the collection's
	//     lease, held and unexpired at now; otherwise ErrStaleFence. The
	//     check and the append are one atomic step, so a holder whose lease
	//     was taken over can never append after the new holder.
	//   - Each entry's Base must equal the record's stored heads (nil for a
	//     record the store does not hold); otherwise ErrConflict and nothing
	//     is written. This is how concurrent pushes to one record, possibly
	//     through different relay processes, are serialized: the loser
	//     reloads the record and merges again.
	//   - Each entry gets the next sequence number of the collection's log
	//     (1, 2, 3, ...; never reused, even across crashes); its Changes
	//     join the record's tail and its Heads become the record's heads.
	//
	// It returns the sequence number of the last entry (the collection's log
	// head). Entries with no Changes or no Heads are not allowed.
	Append(ctx context.Context, c Coll, fence uint64, now time.Time, entries []Entry) (uint64, error)

	// Record returns a record as stored: its snapshot and tail, or
	// ErrNotFound.
	Record(ctx context.Context, c Coll, record string) (Record, error)

	// Records returns records as stored, in record ID order (as bytes),
	// starting after the record ID after ("" for the first), at most limit
	// of them. Fresh devices are sent these instead of the whole log.
	Records(ctx context.Context, c Coll, after string, limit int) ([]Record, error)

	// Log returns the entries with sequence numbers above after, in order,
	// at most limit of them. If after is below the collection's horizon
	// (entries up to it were truncated) it returns a *TruncatedError.
	Log(ctx context.Context, c Coll, after uint64, limit int) ([]LogEntry, error)

	// Head returns the collection's last sequence number (0 when empty).
	Head(ctx context.Context, c Coll) (uint64, error)

	// Compact replaces a record's snapshot with snap, a saved document of
	// the record with every change of its log entries up to upTo, and
	// drops those entries from its tail: the record's content is unchanged.
	// If upTo is past the record's last entry, or its snapshot already
	// covers upTo, it returns ErrConflict and writes nothing (another
	// compaction won). It never blocks or fails an Append.
	Compact(ctx context.Context, c Coll, record string, snap []byte, upTo uint64) error

	// CompactionCandidates returns records whose tail has outgrown their
	// snapshot (see NeedsCompaction), from any tenant and collection, at
	// most limit of them.
	CompactionCandidates(ctx context.Context, limit int) ([]Candidate, error)

	// Truncate drops the collection's log entries up to upTo that no
	// record's tail still holds, and returns the horizon after it: every
	// entry up to the horizon is gone, and Log below it gives a
	// *TruncatedError. The horizon never moves back.
	Truncate(ctx context.Context, c Coll, upTo uint64) (uint64, error)

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

	// Usage reports what one tenant stores: the bytes of its records'
	// snapshots and tails, and its records.
	Usage(ctx context.Context, tenant string) (Usage, error)

	// Stats reports the store's size, for metrics.
	Stats(ctx context.Context) (StoreStats, error)

	// Close releases the store. Calls after Close return ErrStoreClosed.
	Close() error
}

// When a record needs compacting: its tail holds more bytes than its
// snapshot (and more than CompactTailBytes), or more than
// CompactTailEntries entries. Then loading it costs more than a fresh
// snapshot would, and a fresh device would be sent mostly history.
const (
	CompactTailBytes   = 4 << 10
	CompactTailEntries = 256
)

// NeedsCompaction reports whether a record with these sizes is a
// compaction candidate. Every Store uses it.
func NeedsCompaction(snapBytes, tailBytes, tailEntries int64) bool {
	return tailEntries >= 2 && (tailBytes > max(snapBytes, CompactTailBytes) || tailEntries > CompactTailEntries)
}

// Coll names one tenant's collection.
type Coll struct {
	Tenant     string // the app
	Collection string
}

// Entry is one record's accepted changes in an Append.
type Entry struct {
	Record  string
	Base    crdt.Heads // the record's stored heads this push was merged onto
	Changes []byte     // the Automerge changes new to the relay
	Hashes  []crdt.Hash
	Heads   crdt.Heads // the record's heads after the changes
}

// LogEntry is one entry of a collection's log.
type LogEntry struct {
	Seq     uint64
	Record  string
	Changes []byte
	Heads   crdt.Heads // the record's heads after this entry
}

// Record is a record as a store holds it: a snapshot (a saved Automerge
// document) of its log entries up to SnapSeq, then the changes of its later
// entries. Snapshot then Tail is one Automerge stream that loads as the
// whole record (see Data).
type Record struct {
	ID       string
	Heads    crdt.Heads // after the tail
	Seq      uint64     // the record's last log entry
	Snapshot []byte     // nil before the record's first compaction
	SnapSeq  uint64     // the last entry the snapshot holds (0: none)
	Tail     []byte     // the changes of the entries after SnapSeq, in order
	// TailEntries counts the entries in Tail.
	TailEntries int
}

// Data returns the record as one Automerge stream: snapshot, then tail.
func (r Record) Data() []byte {
	if len(r.Snapshot) == 0 {
		return r.Tail
	}
	out := make([]byte, 0, len(r.Snapshot)+len(r.Tail))
	return append(append(out, r.Snapshot...), r.Tail...)
}

// Size is the bytes the record takes as stored.
func (r Record) Size() int { return len(r.Snapshot) + len(r.Tail) }

// Candidate names a record that needs compacting.
type Candidate struct {
	Coll   Coll
	Record string
}

// Usage is what one tenant stores.
type Usage struct {
	Bytes   int64 // snapshots and tails of its records
	Records int64
}

// Document returns a record's data (see Record.Data) and heads, or
// ErrNotFound: what a device is sent for the record.
func Document(ctx context.Context, s Store, c Coll, record string) ([]byte, crdt.Heads, error) {
	r, err := s.Record(ctx, c, record)
	if err != nil {
		return nil, nil, err
	}
	return r.Data(), r.Heads, nil
}

// Lease is a collection's lease: while it is live, only its holder syncs
// the collection, and its fence numbers the holder's writes.
type Lease struct {
	Holder  string
	Fence   uint64
	Expires time.Time
}

// Live reports whether the lease still holds its collection at now: a
// lease is held while now is before Expires, and at Expires it has lapsed.
// Every Store decides by it.
func (l Lease) Live(now time.Time) bool { return now.Before(l.Expires) }

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
	// ErrTruncated means a log read started below the collection's
	// horizon: the entries it asked for were truncated (their records'
	// snapshots hold them). See TruncatedError.
	ErrTruncated = errors.New("relay: log truncated below the cursor")
	// ErrNotFound means the store holds no such record.
	ErrNotFound = errors.New("relay: not found")
	// ErrStoreClosed means the store has been closed.
	ErrStoreClosed = errors.New("relay: store closed")
)
