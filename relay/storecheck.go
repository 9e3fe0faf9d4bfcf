package relay

import "time"

// The argument checks of this package's stores, for Store implementations
// elsewhere (relay/pgstore), so that every store refuses the same inputs
// with the same ErrInvalidArg.

// CheckColl refuses an empty tenant or collection name, or one holding NUL.
func CheckColl(c Coll) error { return checkColl(c) }

// CheckName refuses an empty name, or one holding NUL; what names the
// argument in the error ("record", "holder", ...).
func CheckName(what, s string) error { return checkName(what, s) }

// CheckEntries refuses an Append of no entries, or of an entry with a bad
// record name, no changes or no heads.
func CheckEntries(entries []Entry) error { return checkEntries(entries) }

// CheckLease refuses a bad holder name or a TTL that is not positive.
func CheckLease(holder string, ttl time.Duration) error { return checkLeaseArgs(holder, ttl) }
