package replica

import (
	"context"
	"sync"

	"github.com/ferrysync/ferry/policy"
)

// Direction says which way records moved.
type Direction string

const (
	FromRelay Direction = "from-relay"
	ToRelay   Direction = "to-relay"
)

// Progress reports a collection's sync advancing.
// Done counts records applied or pushed; Total is what is known so far
// (for pulls, it grows as pages arrive).
type Progress struct {
	Profile    string
	Collection string
	Direction  Direction
	Total      int
	Done       int
}

// Listener receives sync events: progress, and a sync completed, stopped
// or failed. Methods are called on the goroutine running the
// sync, never concurrently for one profile (but possibly for two profiles
// at once); they should return quickly, as the sync waits for them.
type Listener interface {
	SyncProgress(p Progress)
	SyncCompleted(st *SyncStats)
	SyncStopped(st *SyncStats)
	SyncFailed(st *SyncStats, err error)
}

// FailAction is the delegate's answer to a failed collection.
type FailAction int

const (
	// Skip leaves the collection failed for this sync.
	Skip FailAction = iota
	// Retry syncs the collection again once the others are done.
	Retry
)

// Delegate decides at a sync's lifecycle points: whether it starts, which
// collections it syncs, what follows a failed one. Methods are called on the goroutine running the sync, one at a
// time per profile; a sync waits for them.
type Delegate interface {
	// ReadyForSync may veto a sync before it starts (ErrVetoed).
	ReadyForSync(profile string) bool
	// BeforeCollection may skip a collection.
	BeforeCollection(profile, collection string) bool
	// AfterCollection reports a collection done (completed or failed).
	AfterCollection(profile string, st *CollectionStats)
	// CollectionFailed decides whether to retry a failed collection later
	// in the same sync.
	CollectionFailed(profile, collection string, err error) FailAction
}

// TokenSource returns a fresh access token for a profile: called before
// each connection and when the relay reports the token expired.
type TokenSource func(ctx context.Context) (string, error)

// hooks holds what the app sets at run time, beside the stored profiles.
type hooks struct {
	mu      sync.Mutex
	tokens  map[string]TokenSource     // by profile
	merge   map[string]policy.Resolver // by collection
	network policy.Network
}

// SetTokenSource makes a profile get its tokens from src (nil: back to the
// profile's static Token).
func (r *Replica) SetTokenSource(profile string, src TokenSource) {
	r.hooks.mu.Lock()
	defer r.hooks.mu.Unlock()
	if r.hooks.tokens == nil {
		r.hooks.tokens = map[string]TokenSource{}
	}
	r.hooks.tokens[profile] = src
}

// SetMergeHook sets the custom-policy resolver of a collection (nil: back
// to Options.MergeHook).
func (r *Replica) SetMergeHook(collection string, h policy.Resolver) {
	r.hooks.mu.Lock()
	defer r.hooks.mu.Unlock()
	if r.hooks.merge == nil {
		r.hooks.merge = map[string]policy.Resolver{}
	}
	r.hooks.merge[collection] = h
}

// SetNetwork tells the replica which network the device is on now. Syncs
// deferred for want of an allowed network run if this one is allowed.
func (r *Replica) SetNetwork(n policy.Network) {
	r.hooks.mu.Lock()
	r.hooks.network = n
	r.hooks.mu.Unlock()
	r.sched.networkChanged()
}

// Network returns the device's current network, as the app last told it.
func (r *Replica) Network() policy.Network {
	if r.opts.Network != nil {
		return r.opts.Network()
	}
	r.hooks.mu.Lock()
	defer r.hooks.mu.Unlock()
	if r.hooks.network == "" {
		return policy.Other
	}
	return r.hooks.network
}

func (r *Replica) tokenSource(profile string) TokenSource {
	r.hooks.mu.Lock()
	src := r.hooks.tokens[profile]
	r.hooks.mu.Unlock()
	if src == nil && r.opts.TokenSource != nil {
		return func(ctx context.Context) (string, error) { return r.opts.TokenSource(ctx, profile) }
	}
	return src
}

func (r *Replica) resolver(p *Profile, coll string) (policy.Resolver, error) {
	r.hooks.mu.Lock()
	hook, set := r.hooks.merge[coll]
	r.hooks.mu.Unlock()
	if !set || hook == nil {
		hook = r.opts.MergeHooks[coll]
	}
	if hook == nil {
		hook = r.opts.MergeHook
	}
	return p.policyFor(coll, r.opts.Policy).Resolver(hook)
}
