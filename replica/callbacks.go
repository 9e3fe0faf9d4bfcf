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

// Progress reports a collection's sync advancing. Done counts records
// applied or pushed; Total is what is known so far (for pulls, it grows as
// pages arrive).
type Progress struct {
	Profile    string
	Collection string
	Direction  Direction
	Total      int
	Done       int
}

// Listener receives sync events: progress, and how each sync ended. Any
// field may be nil. The functions are called on the goroutine running the
// sync, never concurrently for one profile (but possibly for two profiles
// at once); they should return quickly, as the sync waits for them. They
// may read the replica, but must not call Sync or Close, which wait for
// the sync they run in.
type Listener struct {
	Progress  func(Progress)
	Completed func(*SyncStats)
	Stopped   func(*SyncStats) // cancelled by its context, or by Close
	Failed    func(*SyncStats, error)
	// Status is called with a profile's status each time it changes (see
	// Replica.Status).
	Status func(SyncStatus)
}

// FailAction is the delegate's answer to a failed collection.
type FailAction int

const (
	// Skip leaves the collection failed for this sync.
	Skip FailAction = iota
	// Retry syncs the collection again once the others are done.
	Retry
)

// Delegate decides at a sync's lifecycle points. Any field may be nil (the
// sync then goes on). The functions are called on the goroutine running
// the sync, one at a time per profile; the sync waits for them. Like a
// Listener's, they must not call Sync or Close.
type Delegate struct {
	// ReadyForSync may veto a sync before it starts (ErrVetoed).
	ReadyForSync func(profile string) bool
	// BeforeCollection may skip a collection.
	BeforeCollection func(profile, collection string) bool
	// AfterCollection reports a collection done (completed or failed).
	AfterCollection func(profile string, st *CollectionStats)
	// CollectionFailed decides whether to retry a failed collection later
	// in the same sync.
	CollectionFailed func(profile, collection string, err error) FailAction
}

// TokenSource returns the access token a profile presents to its relay.
// It is called before each connection, and again when the relay reports
// the token expired; it may block (fetching a token from a login service,
// say) and is called from the goroutine that syncs, possibly for several
// profiles at once. Tokens are never stored: after a restart the source
// supplies them again.
type TokenSource func(ctx context.Context, profile string) (string, error)

// StaticToken is a TokenSource that always gives token: for development,
// and tokens that do not expire within the app's run.
func StaticToken(token string) TokenSource {
	return func(context.Context, string) (string, error) { return token, nil }
}

// network holds the device's current network, as the app reports it.
type network struct {
	mu sync.Mutex
	n  policy.Network
}

// SetNetwork tells the replica which network the device is on now
// (policy.None when offline). Syncs deferred for want of an allowed
// network run if this one is allowed; a live profile on a network it may
// not use disconnects, and connects again on one it may. Safe to call from
// any goroutine; apps call it from their platform's network callbacks.
func (r *Replica) SetNetwork(n policy.Network) {
	r.net.mu.Lock()
	r.net.n = n
	r.net.mu.Unlock()
	r.sched.networkChanged()
}

// Network returns the device's current network, as the app last reported
// it; policy.Other until it does.
func (r *Replica) Network() policy.Network {
	r.net.mu.Lock()
	defer r.net.mu.Unlock()
	if r.net.n == "" {
		return policy.Other
	}
	return r.net.n
}

// resolver returns the conflict resolver of a profile's collection.
func (r *Replica) resolver(p *Profile, coll string) (policy.Resolver, error) {
	return p.policyFor(coll, r.opts.Policy).Resolver(r.opts.MergeHook)
}
