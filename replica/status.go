package replica

import (
	"sync"
	"time"
)

// SyncState is what a profile's sync is doing now.
type SyncState string

const (
	// StateIdle: not syncing. A manual profile between syncs, a periodic
	// one waiting for its next turn.
	StateIdle SyncState = "idle"
	// StateDeferred: waiting for a network the profile may use.
	StateDeferred SyncState = "deferred"
	// StateConnecting: connecting to the relay.
	StateConnecting SyncState = "connecting"
	// StateWaitingForLease: asking the relay for the lease of the
	// collection about to sync. While another device holds it, the sync
	// waits here, at most Profile.Timeout.
	StateWaitingForLease SyncState = "waiting-for-lease"
	// StateSyncing: pulling and pushing a collection.
	StateSyncing SyncState = "syncing"
	// StateLive: a live profile, connected and caught up: local edits go
	// out and remote ones come in as they happen.
	StateLive SyncState = "live"
	// StateBackingOff: a live profile lost its connection and waits until
	// Retry to connect again.
	StateBackingOff SyncState = "backing-off"
)

// SyncStatus is a profile's sync as it stands: what it is doing, how far
// along, whether it holds a lease, and what last went wrong. It is what an
// app shows its user ("syncing 120 of 800", "offline", "last synced 2
// minutes ago").
type SyncStatus struct {
	Profile    string
	State      SyncState
	Collection string   // the collection being synced, if any
	Progress   Progress // the latest progress of the sync under way
	// LeaseHeld says this device holds Collection's lease now.
	LeaseHeld bool
	// LastError is why the last sync, or live connection, failed; nil
	// once one succeeds.
	LastError   error
	LastErrorAt time.Time
	LastSync    time.Time // when a sync of the profile last completed
	Retry       time.Time // StateBackingOff: when it connects again
}

// statuses holds each profile's status.
type statuses struct {
	// tell is held while the listener hears a change, so changes reach it
	// in the order they were made.
	tell sync.Mutex
	mu   sync.Mutex
	m    map[string]*SyncStatus
}

// Status returns the profile's sync status. ErrNoProfile if there is no
// such profile. Listener.Status is told of every change.
func (r *Replica) Status(profile string) (SyncStatus, error) {
	if _, err := r.Profile(profile); err != nil {
		return SyncStatus{}, err
	}
	r.status.mu.Lock()
	defer r.status.mu.Unlock()
	if st := r.status.m[profile]; st != nil {
		return *st, nil
	}
	return SyncStatus{Profile: profile, State: StateIdle}, nil
}

// setStatus changes a profile's status with fn and tells the listener.
func (r *Replica) setStatus(profile string, fn func(st *SyncStatus)) {
	f := r.opts.Listener.Status
	if f != nil {
		r.status.tell.Lock()
		defer r.status.tell.Unlock()
	}
	r.status.mu.Lock()
	if r.status.m == nil {
		r.status.m = map[string]*SyncStatus{}
	}
	st := r.status.m[profile]
	if st == nil {
		st = &SyncStatus{Profile: profile, State: StateIdle}
		r.status.m[profile] = st
	}
	fn(st)
	out := *st
	r.status.mu.Unlock()
	if f != nil {
		f(out)
	}
}

// setState sets a profile's state, and the collection it concerns.
func (r *Replica) setState(profile string, state SyncState, coll string) {
	r.setStatus(profile, func(st *SyncStatus) {
		st.State, st.Collection = state, coll
		if coll == "" {
			st.LeaseHeld = false
		}
	})
}

// syncEnded records how a sync or live connection ended.
func (r *Replica) syncEnded(profile string, err error, now time.Time) {
	r.setStatus(profile, func(st *SyncStatus) {
		st.Collection, st.LeaseHeld, st.Progress = "", false, Progress{}
		if err != nil {
			st.LastError, st.LastErrorAt = err, now
			return
		}
		st.LastError, st.LastSync = nil, now
	})
}

// forgetStatus drops a removed profile's status.
func (r *Replica) forgetStatus(profile string) {
	r.status.mu.Lock()
	defer r.status.mu.Unlock()
	delete(r.status.m, profile)
}
