package relay

import (
	"errors"
	"fmt"
	"time"
)

// Errors a Store may return besides those the Store methods' contracts
// name (ErrStaleFence, ErrLeaseHeld, ErrConflict,
// ErrTruncated, ErrNotFound, ErrStoreClosed).
var (
	// ErrInvalidArg means a Store method was given an argument it refuses:
	// an empty tenant, collection or record name, a name holding NUL, an
	// entry without changes or heads, an empty holder, or a non-positive
	// lease TTL. Nothing was written.
	ErrInvalidArg = errors.New("relay: invalid store argument")
	// ErrAppendTooLarge means one Append holds more than the store can
	// commit in one transaction. Nothing was written; split the push.
	ErrAppendTooLarge = errors.New("relay: append too large for one transaction")
	// ErrNotRelayStore means a folder holds files that are not a relay
	// store. Nothing in it was changed.
	ErrNotRelayStore = errors.New("relay: folder is not a relay store")
	// ErrNewerStoreFormat means the store was written by a newer Ferry whose
	// format this version cannot read. Nothing in it was changed.
	ErrNewerStoreFormat = errors.New("relay: store written by a newer format version")
	// ErrStoreDamaged means the store is damaged: opening it found a file
	// missing, cut short or failing its checksums, or a read found a
	// stored value that does not decode. Nothing was changed. The
	// error names the folder or the value and what is wrong.
	ErrStoreDamaged = errors.New("relay: store is damaged")
)

// LeaseHeldError is the ErrLeaseHeld returned by Acquire: it carries the
// lease that blocked the caller, so a relay can tell a device who holds the
// collection and until when.
type LeaseHeldError struct {
	Lease Lease
}

func (e *LeaseHeldError) Error() string {
	return fmt.Sprintf("%v: holder %q, fence %d, until %s",
		ErrLeaseHeld, e.Lease.Holder, e.Lease.Fence, e.Lease.Expires.UTC().Format(time.RFC3339Nano))
}

// Is makes errors.Is(err, ErrLeaseHeld) true.
func (e *LeaseHeldError) Is(target error) bool { return target == ErrLeaseHeld }

// Unwrap returns ErrLeaseHeld.
func (e *LeaseHeldError) Unwrap() error { return ErrLeaseHeld }

// TruncatedError is the ErrTruncated returned by Log: entries up to
// Horizon are gone.
type TruncatedError struct {
	Horizon uint64
}

func (e *TruncatedError) Error() string {
	return fmt.Sprintf("%v: entries up to %d are truncated", ErrTruncated, e.Horizon)
}

// Is makes errors.Is(err, ErrTruncated) true.
func (e *TruncatedError) Is(target error) bool { return target == ErrTruncated }

// Unwrap returns ErrTruncated.
func (e *TruncatedError) Unwrap() error { return ErrTruncated }

// ConflictError is the ErrConflict returned by Append: it names the first
// record whose Base did not match, so the relay knows which document the
// pusher must reload and merge again.
type ConflictError struct {
	Record string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%v: record %q", ErrConflict, e.Record)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Unwrap returns ErrConflict.
func (e *ConflictError) Unwrap() error { return ErrConflict }

// Argument checks every Store makes, so that all refuse the same inputs
// with the same ErrInvalidArg. NUL is refused in every name: the Badger
// key layout uses it as a separator, and PostgreSQL text cannot hold it.

// CheckColl refuses an empty tenant or collection name, or one holding NUL.
func CheckColl(c Coll) error {
	if err := CheckName("tenant", c.Tenant); err != nil {
		return err
	}
	return CheckName("collection", c.Collection)
}

// CheckName refuses an empty name, or one holding NUL; what names the
// argument in the error ("record", "holder", ...).
func CheckName(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty %s", ErrInvalidArg, what)
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return fmt.Errorf("%w: %s %q holds NUL", ErrInvalidArg, what, s)
		}
	}
	return nil
}

// CheckAppend refuses the arguments of an Append that every store
// refuses: a bad collection (see CheckColl), no entries, or an entry with
// a bad record name, no changes or no heads.
func CheckAppend(c Coll, entries []Entry) error {
	if err := CheckColl(c); err != nil {
		return err
	}
	if len(entries) == 0 {
		return fmt.Errorf("%w: append of no entries", ErrInvalidArg)
	}
	for i, e := range entries {
		if err := CheckName("record", e.Record); err != nil {
			return fmt.Errorf("entry %d: %w", i, err)
		}
		if len(e.Changes) == 0 {
			return fmt.Errorf("%w: entry %d (record %q) has no changes", ErrInvalidArg, i, e.Record)
		}
		// A stored document with no heads would be indistinguishable from
		// an absent one in the Base check (nil Base means "new record").
		if len(e.Heads) == 0 {
			return fmt.Errorf("%w: entry %d (record %q) has no heads", ErrInvalidArg, i, e.Record)
		}
	}
	return nil
}

// CheckLease refuses a bad holder name or a TTL that is not positive.
func CheckLease(holder string, ttl time.Duration) error {
	if err := CheckName("holder", holder); err != nil {
		return err
	}
	if ttl <= 0 {
		return fmt.Errorf("%w: lease TTL %v is not positive", ErrInvalidArg, ttl)
	}
	return nil
}
