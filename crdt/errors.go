package crdt

import "errors"

var (
	// ErrCorrupt means bytes given to Load or Import are not valid Automerge
	// data. The document they were meant for is unchanged.
	ErrCorrupt = errors.New("crdt: corrupt automerge data")
	// ErrMissingDeps means imported changes depend on changes the document
	// does not have, so they could not be applied.
	ErrMissingDeps = errors.New("crdt: changes depend on changes not in the document")
	// ErrType means a value has a type a record cannot hold, or a field holds
	// a type the caller did not expect.
	ErrType = errors.New("crdt: wrong type")
	// ErrPath means a field path is malformed or passes through a value that
	// is not a map or list.
	ErrPath = errors.New("crdt: bad field path")
	// ErrUnknownHeads means heads name changes the document does not have.
	ErrUnknownHeads = errors.New("crdt: heads not in document")
	// ErrInflateLimit means compressed chunks or columns inflate past the
	// InflateBudget they were framed under. The bytes were not all
	// checked: they may be valid, but are too large once inflated.
	ErrInflateLimit = errors.New("crdt: compressed data inflates past its budget")
	// ErrOpLimit means imported changes would bring a document past the
	// operations set with [Doc.SetMaxOps], the bytes of their values
	// counted as operations. Nothing was applied.
	ErrOpLimit = errors.New("crdt: changes would bring the document past its operation limit")
)
