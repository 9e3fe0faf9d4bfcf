package crdt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/automerge/automerge-go"
)

// Doc is one record: an Automerge document whose root map holds the fields.
//
// A Doc is not safe for concurrent use: automerge-go locks each call, but
// Ferry's writes are read-modify-write sequences, so the owner (a replica)
// serializes access to each record.
//
// Most of a Doc's memory is outside Go's heap: call [Doc.Free] when done
// with it rather than wait for the garbage collector.
type Doc struct {
	am *automerge.Doc

	// seqs counts each actor's changes, as of the heads seqsAt; built on
	// first need and brought up to date incrementally (see seqIndex).
	seqs   map[string]actorSeqs
	seqsAt Heads

	// idx indexes the document's operations, for Import's checks (see
	// opindex.go); nil until first needed. It is immutable and shared with
	// forks, hence atomic: a fork may be taken while the Doc imports.
	idx atomic.Pointer[opIndex]

	// jn records the changes the Doc added lately, so that "changes
	// since" a recent version costs what those changes cost (see
	// journal.go).
	jn           journal
	historyWalks int // calls to automerge-go's Changes(since), for tests
	lookups      int // changes looked up by hash to export or index, for tests
	hasLookups   int // Has's calls into Automerge, for tests
	maxOps       int // see SetMaxOps; 0: no limit
	// def, until the Automerge document is built, is what a Doc made by
	// NewDeferred took in (am is nil meanwhile).
	def *deferred
}

// New returns an empty document that writes as actor (a hex string; a
// replica uses its ID). An empty actor means a random one, for documents
// that are only read and merged, such as the relay's.
func New(actor string) (*Doc, error) {
	d := &Doc{am: automerge.New()}
	d.jn.restart(nil)
	if actor == "" {
		return d, nil
	}
	if err := d.SetActor(actor); err != nil {
		d.Free()
		return nil, err
	}
	return d, nil
}

// Load reads a document saved by [Doc.Save] (or any Automerge document,
// including one saved by the JavaScript library), optionally followed by
// incremental changes. Corrupt or truncated bytes give [ErrCorrupt].
//
// What follows a leading document chunk is imported with [Doc.Import]'s
// checks, so Load accepts no change that Import would refuse; changes
// whose dependencies are missing are refused too.
func Load(data []byte, actor string) (d *Doc, err error) {
	ci, err := frame(data)
	if err != nil {
		return nil, err
	}
	head, rest := data, []byte(nil)
	if len(ci.changes) > 0 || ci.documents > 1 {
		head, rest = leadingDocument(data)
	}
	if d, err = loadAM(head); err != nil {
		return nil, err
	}
	if len(rest) > 0 {
		if _, err := d.Import(rest); err != nil {
			d.Free()
			if errors.Is(err, ErrCorrupt) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
	}
	if actor != "" {
		if err := d.SetActor(actor); err != nil {
			d.Free()
			return nil, err
		}
	}
	return d, nil
}

// leadingDocument splits framed bytes into their first chunk, if it is a
// document, and the rest.
func leadingDocument(data []byte) (head, rest []byte) {
	if data[8] != chunkDocument {
		return nil, data
	}
	n, ln := binary.Uvarint(data[9:]) // framed already
	end := 9 + ln + int(n)
	return data[:end], data[end:]
}

// loadAM loads framed bytes with automerge-go (none: an empty document).
func loadAM(data []byte) (d *Doc, err error) {
	if len(data) == 0 {
		d = &Doc{am: automerge.New()}
		d.jn.restart(nil)
		return d, nil
	}
	defer recoverCorrupt(&err)
	am, err := automerge.Load(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	d = &Doc{am: am}
	d.jn.restart(d.Heads())
	return d, nil
}

// SetActor sets the actor ID used for this document's future changes.
func (d *Doc) SetActor(actor string) error {
	if err := d.live().SetActorID(actor); err != nil {
		return fmt.Errorf("crdt: actor %q: %w", actor, err)
	}
	return nil
}

// Actor returns the document's actor ID.
func (d *Doc) Actor() string { return d.live().ActorID() }

// Save returns the whole document in Automerge's compact form.
func (d *Doc) Save() []byte { return d.live().Save() }

// Heads returns the document's current version, sorted.
func (d *Doc) Heads() Heads {
	if d.def != nil {
		return d.def.led.headList()
	}
	hs := d.live().Heads()
	out := make(Heads, len(hs))
	for i, h := range hs {
		out[i] = Hash(h)
	}
	return sortedHeads(out)
}

// Has reports whether the document holds the change h.
func (d *Doc) Has(h Hash) bool {
	if d.def != nil {
		return d.def.led.held.has(h)
	}
	am := d.live()
	if d.jn.holds(h) {
		return true
	}
	d.hasLookups++
	_, err := am.Change(automerge.ChangeHash(h))
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
//
// The fork writes as the same actor. Do not commit edits to both the fork
// and the original: the two would make different changes with the same
// actor and sequence number, which no document can hold both of (Import
// refuses the second with ErrCorrupt). Give the fork its own actor with
// [Doc.SetActor] if both will be edited.
func (d *Doc) Fork(at Heads) (*Doc, error) {
	if err := d.hasAll(at); err != nil {
		return nil, err
	}
	am, err := d.live().Fork(amHashes(at)...)
	if err != nil {
		return nil, fmt.Errorf("crdt: fork: %w", err)
	}
	f := &Doc{am: am}
	f.jn.restart(f.Heads())
	// The index knows which heads it describes, so a fork at other heads
	// brings it up to date (or rebuilds it) on first use.
	f.idx.Store(d.idx.Load())
	// A fork gets a fresh random actor; keep ours so any change made on the
	// fork is attributed to this replica.
	if err := f.SetActor(d.Actor()); err != nil {
		f.Free()
		return nil, err
	}
	return f, nil
}

// ChangesSince returns, as bytes for [Doc.Import], every change in the
// document that is not an ancestor of since (nil: the whole history).
// It returns nil when there is nothing new. Unknown heads give
// [ErrUnknownHeads]: automerge-go would silently return everything.
//
// It costs time in proportion to the changes it returns when since is a
// version the document had lately, or one whose history includes such a
// version; otherwise in proportion to the whole history.
func (d *Doc) ChangesSince(since Heads) ([]byte, error) {
	var heads Heads
	if len(since) > 0 {
		heads = d.Heads()
		// A version the document had holds only changes it holds.
		if d.syncJournal(heads); !d.jn.isMark(since) {
			if err := d.hasAll(since); err != nil {
				return nil, err
			}
		}
	}
	es, ok, err := d.journalPayloads(since, heads)
	if err != nil {
		return nil, fmt.Errorf("crdt: changes: %w", err)
	}
	if ok {
		if len(es) == 0 {
			return nil, nil
		}
		return appendChunks(nil, es), nil
	}
	chs, err := d.changesSince(since, heads)
	if err != nil {
		return nil, fmt.Errorf("crdt: changes: %w", err)
	}
	if len(chs) == 0 {
		return nil, nil
	}
	return automerge.SaveChanges(chs), nil
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
	if _, err := d.live().Commit(msg, automerge.CommitOptions{Time: &t}); err != nil {
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

// CommitEmpty records a change even if no edits were made, so a record
// created with no fields still exists (it has heads) and syncs.
func (d *Doc) CommitEmpty(msg string, at time.Time) error {
	t := at
	if _, err := d.live().Commit(msg, automerge.CommitOptions{Time: &t, AllowEmpty: true}); err != nil {
		return fmt.Errorf("crdt: commit: %w", err)
	}
	return nil
}

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
		if e, ok := r.(error); ok && errors.Is(e, ErrFreed) {
			panic(r) // a bug in the caller, not bad data
		}
		*err = errors.Join(ErrCorrupt, fmt.Errorf("automerge panicked: %v", r))
	}
}

// memSize estimates the bytes of Go memory the Doc holds beyond
// automerge-go's own document: the indexes Import keeps, and the journal
// of recent changes. (Automerge's document lives in Rust memory, in
// proportion to the saved size and more.) An index shared with forks is
// counted in full by each.
func (d *Doc) memSize() int {
	if d.def != nil {
		return d.def.led.memSize() + cap(d.def.data) + cap(d.def.packed)
	}
	n := d.jn.size()
	if x := d.idx.Load(); x != nil {
		for l := x.top; l != nil; l = l.parent {
			n += l.memSize()
		}
		n += x.unreadSize()
	}
	for a := range d.seqs {
		n += len(a) + seqEntryBytes
	}
	return n
}
