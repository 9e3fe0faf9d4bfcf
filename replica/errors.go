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
	// ErrTooLarge means a record's changes exceed Options.MaxRecordBytes.
	ErrTooLarge = errors.New("ferry: record too large")
	// ErrFeedOverflow ends a change feed whose reader fell behind its buffer.
	// Re-subscribe and rescan to catch up.
	ErrFeedOverflow = errors.New("ferry: change feed overflowed")
)
