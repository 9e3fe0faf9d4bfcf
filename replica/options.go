package replica

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/transport"
)

// Options configure a replica. A nil *Options is valid and means the
// defaults. Open copies the Options it is given and never modifies them:
// later changes have no effect, and one Options may open several replicas
// (their callbacks are then called by each).
type Options struct {
	// InMemory keeps everything in memory (for tests): nothing survives
	// Close. The dir argument of Open is ignored.
	InMemory bool

	// Relaxed turns off every fsync. Writes are much faster, but the last
	// writes before a power loss or kernel crash may be lost even though
	// they returned without error. A process crash alone loses nothing.
	// The default is durable: a local write (Update, Import) and a
	// profile change are fsynced before the call returns; what the relay
	// sent or acknowledged is not fsynced on its own, as a sync fetches
	// it again if a crash loses it.
	Relaxed bool

	// CacheBytes bounds the memory of the documents kept loaded, each
	// counted by what it held when it was loaded from the store (its
	// changes and operations, as the relay counts them: crdt.Estimate,
	// some 650 bytes an operation and 1,800 a change), grown in
	// proportion to its stored bytes since; a loaded Automerge document
	// takes 20 to 1,350 times its stored bytes. A document the cache has
	// not seen loaded (one larger than the whole cache, put back after
	// an edit) is counted at 8 KiB plus 64 times its stored bytes, which
	// may be low. Documents that leave the cache free their
	// memory at once. Reads do not load documents (they read each
	// record's read model); edits and syncs do, and the cache spares
	// reloading the records being edited. Default 16 MiB.
	CacheBytes int64

	// MemoryHeadroom is how far Go's heap may grow past what is live
	// before it is collected, while a replica is open. The store
	// allocates in bursts (tables built in memory as its logs fill up and
	// as it compacts them, blocks read and decompressed), and Go's
	// default pacing lets the heap grow by as much as is live (GOGC=100)
	// before it collects: tens of MB that no one uses. While replicas are
	// open, they set Go's soft memory limit (debug.SetMemoryLimit) to what
	// was live at the last collection plus the largest of their
	// headrooms, and move it after each collection; the last to close
	// puts back the limit it found. A process that set a limit of its own
	// (GOMEMLIMIT, debug.SetMemoryLimit) or turned the collector off
	// (GOGC=off) before the first replica opened is left alone, and so is
	// one that sets a limit while they are open. Collections are more
	// frequent where the store allocates in bursts (an insert, which
	// already collects every 500 records, measured no more CPU). The
	// heap may always grow by a quarter of what is live, so a process
	// whose own Go heap is large collects at most four times as often as
	// under GOGC=100; one that cannot afford that sets a limit of its own
	// or a negative headroom. Default DefaultMemoryHeadroom (16 MiB);
	// negative leaves Go's pacing alone.
	MemoryHeadroom int64

	// CompactAfter folds a record's incremental chunks into its snapshot
	// once it has this many, or, for a record whose snapshot is over
	// 1 KiB, once more for each KiB of it, up to 8 times as many (a fold
	// saves the whole record). Chunks also fold once their bytes pass
	// twice the snapshot's plus 4 KiB. Default 32.
	CompactAfter int

	// MaxRecordBytes bounds one record's size, as a saved Automerge
	// document; a write past it fails with ErrTooLarge. It is the relay's
	// max_record, which bounds the same size: a relay refuses a push that
	// would grow a record's document past it. Default
	// transport.DefaultMaxRecord (1 MiB), the relay's default; a replica
	// syncing with a relay configured otherwise should match it.
	MaxRecordBytes int

	// GCInterval is how often Badger's value log is garbage-collected in
	// the background. Default 10 minutes; negative disables it.
	GCInterval time.Duration

	// memTableSize, if set (by tests), is the size of Badger's
	// memtables, which Badger's limit on one transaction follows.
	memTableSize int64

	// Logger receives the replica's and Badger's logs. Default: discard.
	Logger *slog.Logger

	// Clock stamps commits, sync statistics and statuses. Default
	// time.Now. It is called concurrently from every goroutine that
	// writes or syncs, and from inside store transactions with the
	// records being written locked: it must be safe for concurrent use,
	// return at once, and not call the replica.
	Clock func() time.Time

	// LocalOnly never syncs: Sync returns ErrLocalOnly and periodic and
	// live profiles do not run. Profiles may still be stored.
	LocalOnly bool

	// MaxProfiles bounds the stored sync profiles. Default 16.
	MaxProfiles int

	// Policy resolves conflicts for profiles and collections that name no
	// policy. Default prefer-local.
	Policy policy.Policy

	// MergeHook resolves conflicts under the custom policy (see
	// policy.Resolver for when it is called and what it may do). Each
	// conflict names its collection; policy.PerCollection builds a hook
	// from one per collection. A profile that syncs a collection under the
	// custom policy needs it: AddProfile refuses the profile otherwise.
	// Syncs of different collections may call it at once.
	MergeHook policy.Resolver

	// TokenSource supplies the access token of each profile, at each
	// connection. Required to sync; StaticToken wraps a fixed one. It is
	// called concurrently (see TokenSource for when).
	TokenSource TokenSource

	// Listener receives sync events; Delegate decides at a sync's
	// lifecycle points. Their fields may be nil. Each type says from
	// which goroutines its functions are called.
	Listener Listener
	Delegate Delegate

	// Backoff bounds the live mode's reconnection delays. Defaults 250 ms
	// and 30 s.
	BackoffMin, BackoffMax time.Duration

	// PresenceHeartbeat is how often a live connection says this device's
	// presence states again (see Collection.SetPresence); a peer not heard
	// from for three of them has left. Default DefaultPresenceHeartbeat,
	// automerge-repo's.
	PresenceHeartbeat time.Duration

	// HTTPClient makes the connections to relays: set it for custom TLS
	// roots, a proxy, or a test network. Its Timeout must be zero (a
	// connection lives as long as a sync). Default: http.DefaultClient.
	HTTPClient *http.Client
}

func (o *Options) withDefaults() Options {
	var v Options
	if o != nil {
		v = *o
	}
	if v.CacheBytes <= 0 {
		v.CacheBytes = 16 << 20
	}
	if v.MemoryHeadroom == 0 {
		v.MemoryHeadroom = DefaultMemoryHeadroom
	}
	if v.CompactAfter <= 0 {
		v.CompactAfter = 32
	}
	if v.MaxRecordBytes <= 0 {
		v.MaxRecordBytes = transport.DefaultMaxRecord
	}
	if v.GCInterval == 0 {
		v.GCInterval = 10 * time.Minute
	}
	if v.Logger == nil {
		v.Logger = slog.New(slog.DiscardHandler)
	}
	if v.Clock == nil {
		v.Clock = time.Now
	}
	if v.MaxProfiles <= 0 {
		v.MaxProfiles = 16
	}
	if v.BackoffMin <= 0 {
		v.BackoffMin = 250 * time.Millisecond
	}
	if v.BackoffMax <= 0 {
		v.BackoffMax = 30 * time.Second
	}
	if v.PresenceHeartbeat <= 0 {
		v.PresenceHeartbeat = DefaultPresenceHeartbeat
	}
	return v
}
