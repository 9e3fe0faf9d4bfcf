package replica

import "errors"

var (
	// ErrNotFound means the record does not exist or is deleted.
	ErrNotFound = errors.New("ferry: record not found")
	// ErrExists means Create was given the ID of a live record.
	ErrExists = errors.New("ferry: record exists")
	// ErrInvalidName means a collection name or record ID is not allowed.
	ErrInvalidName = errors.New("ferry: invalid name")
	// ErrNotStore means the folder holds files that are not a Ferry store.
	// Nothing in it was changed.
	ErrNotStore = errors.New("ferry: folder is not a Ferry store")
	// ErrNewerFormat means the store was written by a newer Ferry, whose
	// format this version cannot read. Nothing in it was changed.
	ErrNewerFormat = errors.New("ferry: store written by a newer format version")
	// ErrClosed means the replica has been closed.
	ErrClosed = errors.New("ferry: replica closed")
	// ErrTooLarge means a record, saved, would exceed Options.MaxRecordBytes,
	// or a unit of work (Replica.Write) writes more than one store
	// transaction holds; nothing of it was written.
	ErrTooLarge = errors.New("ferry: record too large")
	// ErrFeedOverflow ends a change feed whose reader fell behind its buffer.
	// Re-subscribe and rescan to catch up.
	ErrFeedOverflow = errors.New("ferry: change feed overflowed")
)

// Sync errors.
var (
	// ErrInvalidProfile means a profile's settings are incomplete or wrong.
	ErrInvalidProfile = errors.New("ferry: invalid sync profile")
	// ErrProfileExists means AddProfile was given a name in use.
	ErrProfileExists = errors.New("ferry: sync profile exists")
	// ErrNoProfile means no profile has that name.
	ErrNoProfile = errors.New("ferry: no such sync profile")
	// ErrNeverSynced means the profile exists but has not synced yet.
	ErrNeverSynced = errors.New("ferry: profile has not synced yet")
	// ErrTooManyProfiles means the replica holds Options.MaxProfiles
	// profiles already.
	ErrTooManyProfiles = errors.New("ferry: too many sync profiles")
	// ErrDeferred means the sync did not run because the current network
	// is not one the profile may use. It is queued and runs when an allowed
	// network appears (Replica.SetNetwork). It is not a failure.
	ErrDeferred = errors.New("ferry: sync deferred until an allowed network")
	// ErrLocalOnly means the replica was opened in local-only mode and
	// never syncs.
	ErrLocalOnly = errors.New("ferry: replica is local-only")
	// ErrVetoed means the delegate's ReadyForSync refused the sync.
	ErrVetoed = errors.New("ferry: sync vetoed by the app")
	// ErrLeaseTimeout means the collection's lease (held by one device at a
	// time) was not granted within the profile's timeout; nothing was changed.
	ErrLeaseTimeout = errors.New("ferry: sync lease not granted in time")
	// ErrSyncFailed means at least one collection failed; the SyncStats
	// say which and why.
	ErrSyncFailed = errors.New("ferry: sync failed")
)

// ErrMergeHook wraps a merge hook's error: the record stays pending, its
// remote changes are kept for the next sync, and it is listed as failed.
var ErrMergeHook = errors.New("ferry: merge hook failed")

// Damage to the store.
var (
	// ErrDamaged means Open refused the folder: it holds a Ferry store
	// with a file missing, cut short or failing its checksums. The error
	// names the folder and what is wrong. Open never deletes a file that
	// may hold data, and damage it finds before Badger opens the store
	// (all the damage the tests know of) leaves the folder as it was.
	ErrDamaged = errors.New("ferry: store is damaged")
	// ErrCorrupt means a record's stored bytes do not load as the version
	// its bookkeeping records: the store was damaged after it was opened,
	// or by something Open cannot see. The error names the record; the
	// other records are unaffected.
	ErrCorrupt = errors.New("ferry: record is corrupt")
)

// ErrInvalidIndex means an index declaration or an index query is not
// valid: no fields, a query naming an index the collection does not have,
// more equality values than the index has fields, or a value of a kind
// an index does not order.
var ErrInvalidIndex = errors.New("ferry: invalid index")
