package crdt

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/automerge/automerge-go"
)

// Doc is one record: an Automerge document whose root map holds the fields.
//
// A Doc is not safe for concurrent use: automerge-go locks each call, but
// Ferry's writes are read-modify-write sequences, so the owner (a replica)
// serializes access to each record.
type Doc struct {
	am *automerge.Doc
}

// New returns an empty document that writes as actor (a hex string; a
// replica uses its ID).
func New(actor string) (*Doc, error) {
	d := &Doc{am: automerge.New()}
	if err := d.SetActor(actor); err != nil {
		return nil, err
	}
	return d, nil
}

// Load reads a document saved by [Doc.Save] (or any Automerge document,
// including one saved by the JavaScript library), optionally followed by
// incremental changes. Corrupt or truncated bytes give [ErrCorrupt].
func Load(data []byte, actor string) (d *Doc, err error) {
	if _, err := frame(data); err != nil {
		return nil, err
	}
	defer recoverCorrupt(&err)
	am, err := automerge.Load(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	d = &Doc{am: am}
	if actor != "" {
		if err := d.SetActor(actor); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// SetActor sets the actor ID used for this document's future changes.
func (d *Doc) SetActor(actor string) error {
	if err := d.am.SetActorID(actor); err != nil {
		return fmt.Errorf("crdt: actor %q: %w", actor, err)
	}
	return nil
}

// Actor returns the document's actor ID.
func (d *Doc) Actor() string { return d.am.ActorID() }

// Save returns the whole document in Automerge's compact form.
func (d *Doc) Save() []byte { return d.am.Save() }

// Heads returns the document's current version, sorted.
func (d *Doc) Heads() Heads {
	hs := d.am.Heads()
	out := make(Heads, len(hs))
	for i, h := range hs {
		out[i] = Hash(h)
	}
	return sortedHeads(out)
}

// Has reports whether the document holds the change h.
func (d *Doc) Has(h Hash) bool {
	_, err := d.am.Change(automerge.ChangeHash(h))
	return err == nil
}

func (d *Doc) hasAll(hs Heads) error {
	for _, h := range hs {
		if !d.Has(h) {
			return fmt.Errorf("%w: %s", ErrUnknownHeads, h)
		}
	}
	return nil
}

// Fork returns an independent copy of the document as of heads (nil means
// now). Forking at past heads replays history, which costs time in
// proportion to the document's history: use it only where a record has both
// local and remote changes to compare.
func (d *Doc) Fork(at Heads) (*Doc, error) {
	if err := d.hasAll(at); err != nil {
		return nil, err
	}
	am, err := d.am.Fork(amHashes(at)...)
	if err != nil {
		return nil, fmt.Errorf("crdt: fork: %w", err)
	}
	f := &Doc{am: am}
	// A fork gets a fresh random actor; keep ours so any change made on the
	// fork is attributed to this replica.
	if err := f.SetActor(d.Actor()); err != nil {
		return nil, err
	}
	return f, nil
}

// ChangesSince returns, as bytes for [Doc.Import], every change in the
// document that is not an ancestor of since (nil: the whole history).
// It returns nil when there is nothing new. Unknown heads give
// [ErrUnknownHeads]: automerge-go would silently return everything.
func (d *Doc) ChangesSince(since Heads) ([]byte, error) {
	if err := d.hasAll(since); err != nil {
		return nil, err
	}
	chs, err := d.am.Changes(amHashes(since)...)
	if err != nil {
		return nil, fmt.Errorf("crdt: changes: %w", err)
	}
	if len(chs) == 0 {
		return nil, nil
	}
	return automerge.SaveChanges(chs), nil
}

// Import applies changes (from [Doc.ChangesSince], or a saved document) to
// the document. Changes it already holds are ignored, so importing twice is
// harmless. Corrupt or truncated bytes give [ErrCorrupt] and changes whose
// dependencies are neither in the document nor earlier in data give
// [ErrMissingDeps]; in both cases the document is unchanged. It returns the
// number of changes that were new.
//
// Like every method that reads the document's history, Import first commits
// any uncommitted edits (without a message or time): call [Doc.Commit] before.
func (d *Doc) Import(data []byte) (n int, err error) {
	ci, err := frame(data)
	if err != nil {
		return 0, err
	}
	if len(data) == 0 {
		return 0, nil
	}
	// A whole document (or a compressed change) may carry the dependencies
	// of the change chunks after it, and framing cannot list what it holds:
	// such streams are checked after they are applied instead.
	opaque := ci.documents > 0 || ci.opaque > 0
	batch := make(map[Hash]bool, len(ci.changes))
	for _, c := range ci.changes {
		if batch[c.Hash] {
			continue
		}
		if d.Has(c.Hash) {
			batch[c.Hash] = true
			continue
		}
		for _, dep := range c.Deps {
			if !opaque && !batch[dep] && !d.Has(dep) {
				return 0, fmt.Errorf("%w: %s needs %s", ErrMissingDeps, c.Hash, dep)
			}
		}
		batch[c.Hash] = true
		n++
	}
	if n == 0 && !opaque {
		return 0, nil
	}
	before := d.Heads()
	if err := d.loadIncremental(data); err != nil {
		return 0, d.rollback(before, err)
	}
	// automerge-go's LoadIncremental drops, without an error, a chunk it
	// cannot parse and everything after it, and it silently queues a change
	// whose dependencies are missing. Check that everything arrived.
	for _, c := range ci.changes {
		if d.Has(c.Hash) {
			continue
		}
		for _, dep := range c.Deps {
			if !d.Has(dep) {
				return 0, d.rollback(before, fmt.Errorf("%w: %s needs %s", ErrMissingDeps, c.Hash, dep))
			}
		}
		return 0, d.rollback(before, fmt.Errorf("%w: change %s could not be applied", ErrCorrupt, c.Hash))
	}
	for _, h := range ci.docHeads {
		if !d.Has(h) {
			return 0, d.rollback(before, fmt.Errorf("%w: document chunk with head %s was not applied", ErrCorrupt, h))
		}
	}
	if opaque {
		chs, err := d.am.Changes(amHashes(before)...)
		if err != nil {
			return 0, d.rollback(before, fmt.Errorf("%w: %v", ErrCorrupt, err))
		}
		n = len(chs)
	}
	return n, nil
}

// loadIncremental applies framed bytes, turning automerge's errors and
// panics into ErrCorrupt or ErrMissingDeps.
func (d *Doc) loadIncremental(data []byte) (err error) {
	defer recoverCorrupt(&err)
	if err := d.am.LoadIncremental(data); err != nil {
		if strings.Contains(err.Error(), "deps") {
			// Only reachable through document or compressed chunks, whose
			// dependencies framing cannot see.
			return fmt.Errorf("%w: %v", ErrMissingDeps, err)
		}
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return nil
}

// rollback returns the document to heads after a failed import (automerge
// applies a stream change by change, so a failure can leave part of it
// applied) and returns cause. Rebuilding replays the history, which is
// slow, but only failed imports pay for it.
func (d *Doc) rollback(heads Heads, cause error) error {
	if d.Heads().Equal(heads) {
		return cause
	}
	actor := d.Actor()
	var am *automerge.Doc
	if len(heads) == 0 {
		// Fork with no heads would copy the current state, not the empty one.
		am = automerge.New()
	} else {
		var err error
		if am, err = d.am.Fork(amHashes(heads)...); err != nil {
			return errors.Join(cause, fmt.Errorf("crdt: rollback failed: %w", err))
		}
	}
	if err := am.SetActorID(actor); err != nil {
		return errors.Join(cause, fmt.Errorf("crdt: rollback failed: %w", err))
	}
	d.am = am
	return cause
}

// Commit records the edits made since the last commit as one change, stamped
// with at (the zero time records none). It reports whether there was
// anything to commit.
//
// Methods that read the document's history (Heads, Has, ChangesSince, Fork,
// Save, Import) commit pending edits themselves, without a message or time,
// as automerge-go does; a Commit after them then reports false. Commit right
// after editing.
func (d *Doc) Commit(msg string, at time.Time) (bool, error) {
	t := at
	if _, err := d.am.Commit(msg, automerge.CommitOptions{Time: &t}); err != nil {
		// automerge-go reports "nothing to commit" as this error, and has no
		// sentinel for it. (Reading the heads first to compare would itself
		// commit the pending edits.)
		if err.Error() == amEmptyCommit {
			return false, nil
		}
		return false, fmt.Errorf("crdt: commit: %w", err)
	}
	return true, nil
}

// amEmptyCommit is automerge-go's error for a commit with no operations.
const amEmptyCommit = "Commit is empty"

func amHashes(hs Heads) []automerge.ChangeHash {
	out := make([]automerge.ChangeHash, len(hs))
	for i, h := range hs {
		out[i] = automerge.ChangeHash(h)
	}
	return out
}

// recoverCorrupt turns a panic inside automerge-go (it panics on some
// internal failures) into ErrCorrupt, so hostile bytes cannot crash the
// process.
func recoverCorrupt(err *error) {
	if r := recover(); r != nil {
		*err = errors.Join(ErrCorrupt, fmt.Errorf("automerge panicked: %v", r))
	}
}
