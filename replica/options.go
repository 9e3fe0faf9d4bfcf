package replica

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/transport"
)

// Options configure a replica. A nil *Options is valid and means the
// defaults; Open never modifies the Options it is given.
type Options struct {
	// InMemory keeps everything in memory (for tests): nothing survives
	// Close. The dir argument of Open is ignored.
	InMemory bool

	// Relaxed turns off fsync on every commit (Badger's SyncWrites). Writes
	// are much faster, but the last writes before a power loss or kernel
	// crash may be lost even though they returned without error. A process
	// crash alone loses nothing. The default is durable.
	Relaxed bool

	// CacheSize bounds how many loaded documents are kept in memory.
	// Default 1024.
	CacheSize int

	// CompactAfter folds a record's incremental chunks into its snapshot
	// once it has this many. Default 32.
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

	// Logger receives the replica's and Badger's logs. Default: discard.
	Logger *slog.Logger

	// Clock stamps commits. Default time.Now.
	Clock func() time.Time

	// LocalOnly never syncs: Sync returns ErrLocalOnly and periodic and
	// live profiles do not run. Profiles may still be stored.
	LocalOnly bool

	// MaxProfiles bounds the stored sync profiles. Default 16.
	MaxProfiles int

	// Policy resolves conflicts for profiles and collections that name no
	// policy. Default prefer-local.
	Policy policy.Policy

	// MergeHook resolves conflicts under the custom policy, for collections
	// without a hook of their own. MergeHooks gives collections their own
	// (also settable later with Replica.SetMergeHook). Set them here so
	// that periodic and live profiles, which start syncing as Open
	// returns, have them from their first sync.
	MergeHook  policy.Resolver
	MergeHooks map[string]policy.Resolver

	// TokenSource supplies fresh access tokens for any profile (a
	// profile's own, set with Replica.SetTokenSource, wins). Nil: each
	// profile's static Token.
	TokenSource func(ctx context.Context, profile string) (string, error)

	// Listener receives sync events; Delegate decides at a sync's
	// lifecycle points. Both may be nil.
	Listener Listener
	Delegate Delegate

	// Network reports the device's current network (as the platform's
	// reachability API gives it), checked before each sync. Without it, the replica
	// uses the last value given to SetNetwork, initially policy.Other.
	Network func() policy.Network

	// NetworkPoll is how often deferred syncs re-check a Network function.
	// Default 30 s. (SetNetwork re-checks at once.)
	NetworkPoll time.Duration

	// Backoff bounds the live mode's reconnection delays. Defaults 250 ms
	// and 30 s.
	BackoffMin, BackoffMax time.Duration

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
	if v.CacheSize <= 0 {
		v.CacheSize = 1024
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
	if v.NetworkPoll <= 0 {
		v.NetworkPoll = 30 * time.Second
	}
	if v.BackoffMin <= 0 {
		v.BackoffMin = 250 * time.Millisecond
	}
	if v.BackoffMax <= 0 {
		v.BackoffMax = 30 * time.Second
	}
	return v
}
