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
// field may be nil.
//
// Completed, Stopped and Failed are called on the goroutine that ran the
// sync (the caller of Sync, or the replica's own for periodic and
// deferred syncs), one at a time per profile. Progress is called on the
// goroutine syncing too; a live profile's pushes report it from the live
// session's goroutine, which may overlap a Sync of the same profile that
// the app starts. So does Failed when the relay refuses a live push: its
// statistics are that push's, and the session pushes those records again
// later. Status is called from whichever goroutine changed the
// status, one call at a time for the whole replica, in the order the
// changes were made. Other calls for different profiles may run at once.
//
// The sync waits for each call, so they should return quickly. No record
// lock is held and no store transaction is open while they run: they may
// read and write the replica, but must not call Sync or Close, which wait
// for the sync they run in.
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
// the sync (the caller of Sync, or the replica's own for periodic and
// deferred syncs), and the sync waits for them. BeforeCollection,
// AfterCollection and CollectionFailed are called one at a time per
// profile; ReadyForSync runs before the sync takes its profile's turn, so
// two syncs of one profile (the app's Sync and a periodic one) may call it
// at once. Calls for different profiles may run at once. A live profile's
// sessions do not consult the delegate. Like a Listener's, the functions
// run with no record lock held and outside store transactions, and must
// not call Sync or Close.
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
// say) until ctx ends. It is called from the goroutine that syncs, and
// from the one that renews a lease in the background, so it must be safe
// for concurrent use: calls may overlap for several profiles, and for one
// (a renewal and the sync's own request finding the token expired at
// once). No record lock is held and no store transaction is open while it
// runs. Tokens are never stored: after a restart the source supplies them
// again.
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
// any goroutine, at any time, including from the replica's callbacks;
// apps call it from their platform's network callbacks. It returns at
// once: the syncs it wakes run on the replica's goroutines.
func (r *Replica) SetNetwork(n policy.Network) {
	r.net.mu.Lock()
	r.net.n = n
	r.net.mu.Unlock()
	r.sched.networkChanged()
}

// Network returns the device's current network, as the app last reported
// it; policy.Other until it does. Safe to call from any goroutine; a
// concurrent SetNetwork may change it as soon as it returns.
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
