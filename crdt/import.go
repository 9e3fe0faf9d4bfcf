package crdt

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/automerge/automerge-go"
)

// Import applies changes (from [Doc.ChangesSince], or a saved document) to
// the document. Changes it already holds are ignored, so importing twice is
// harmless. Corrupt or truncated bytes give [ErrCorrupt] and changes whose
// dependencies are neither in the document nor earlier in data give
// [ErrMissingDeps]; in both cases the document is unchanged. It returns the
// number of changes that were new.
//
// Like every method that reads the document's history, Import first commits
// any uncommitted edits (without a message or time): call [Doc.Commit] first.
//
// Bytes from the network are hostile. Import refuses the malformed chunks
// known to crash automerge-go's Rust core (which would abort the process),
// changes that skip an actor's sequence numbers, and, before applying
// anything, every change that the document's saved form would not rebuild
// byte for byte, which would leave a document that no longer loads: a
// change not in Automerge's canonical encoding, or whose operations refer
// to operations the document does not hold (see canonical.go and
// opindex.go). After a successful Import, [Load] accepts [Doc.Save]. The
// checks cost time in proportion to the changes, once the document's
// operations are indexed: the first Import into a document indexes its
// history.
func (d *Doc) Import(data []byte) (n int, err error) {
	if d.def != nil {
		if n, ok, err := d.importDeferred(data); ok {
			return n, err
		}
		if err := d.Build(); err != nil {
			return 0, err
		}
	}
	return d.importData(data, nil)
}

// Imported is what [Doc.ImportChanges] did.
type Imported struct {
	// N is the number of changes that were new.
	N int
	// Before and After are the document's heads before and after the
	// import (the same heads when nothing was new).
	Before, After Heads
	// Stream lists the stream's change chunks as [ParseChanges] does.
	Stream []ChangeInfo
	// Added lists the changes that were new, in the order applied.
	Added []ChangeInfo
}

// ImportChanges is [Doc.Import], with the same checks, reporting what it
// read and did: a caller that goes on to compare versions needs the
// stream's changes and the heads around the import, which reading again
// (ParseChanges, Heads, ChangesSince) would cost as much again. A
// document made by [NewDeferred] is built first.
func (d *Doc) ImportChanges(data []byte) (Imported, error) {
	if err := d.Build(); err != nil {
		return Imported{}, err
	}
	var imp Imported
	_, err := d.importData(data, &imp)
	return imp, err
}

// importData is Import on a built document, filling rep if it is not nil.
func (d *Doc) importData(data []byte, rep *Imported) (n int, err error) {
	ci, err := frame(data)
	if err != nil {
		return 0, err
	}
	unchanged := func() (int, error) {
		if rep != nil {
			h := d.Heads()
			*rep = Imported{Before: h, After: h, Stream: ci.changes}
		}
		return 0, nil
	}
	if len(data) == 0 {
		return unchanged()
	}
	// A whole document may hold the dependencies of the change chunks after
	// it, and framing does not list what it holds: such streams are also
	// checked after they are applied.
	opaque := ci.documents > 0
	if err := d.checkDocOps(ci); err != nil {
		return 0, err
	}
	fresh, inStream, err := d.freshChanges(ci, opaque)
	if err != nil {
		return 0, err
	}
	if !opaque {
		if len(fresh) == 0 {
			return unchanged()
		}
		if err := d.checkAuthors(ci, fresh, inStream); err != nil {
			return 0, err
		}
	}
	// Nothing below changes the document before the load: the heads read
	// here are those the index is brought to and the load starts from.
	before := d.Heads()
	// Check, before anything is applied, every change the stream will add:
	// against the index as of now, or, if the history cannot be indexed, by
	// saving and loading afterwards (see recordVerified).
	payloads, added, loaded, err := d.incoming(data, ci, fresh, opaque, len(before) == 0)
	if err != nil {
		return 0, err
	}
	defer func() {
		if loaded != nil { // not taken: refused before
			freeAM(loaded)
		}
	}()
	index := d.indexAt
	if d.maxOps > 0 {
		index = d.fullIndex // the limit counts every operation
	}
	base, _ := index(before)
	v, err := verifyChanges(base, payloads, added)
	if errors.Is(err, errUnreadable) {
		// As when index cannot decode the history.
		d.idx.Store(nil)
		base = nil
		v, err = verifyChanges(nil, payloads, added)
	}
	if err != nil {
		return 0, err
	}
	if err := d.checkOpLimit(base, v); err != nil {
		return 0, err
	}

	d.syncJournal(before)
	if loaded != nil {
		// The stream is one whole document and d was empty: the document
		// the checks loaded is what applying it would make.
		am := loaded
		loaded = nil
		if err := d.adopt(am); err != nil {
			return 0, d.rollback(before, err)
		}
	} else if err := d.loadIncremental(data); err != nil {
		return 0, d.rollback(before, err)
	}
	after, err := d.checkApplied(ci, fresh, added, opaque)
	if err != nil {
		return 0, d.rollback(before, err)
	}
	if err := d.recordVerified(v, after); err != nil {
		return 0, d.rollback(before, err)
	}
	if rep != nil {
		*rep = Imported{N: len(added), Before: before, After: after, Stream: ci.changes, Added: make([]ChangeInfo, len(added))}
		for i, e := range added {
			rep.Added[i] = ChangeInfo{Hash: e.hash, Deps: slices.Clone(e.deps)} // the journal keeps e.deps
		}
	}
	return len(added), nil
}

// incoming returns the payloads of the changes a stream adds to the
// document and the changes themselves, in an order they apply: the fresh
// chunks of a plain stream, or for one with a whole document (opaque),
// whatever it holds that the document lacks.
func (d *Doc) incoming(data []byte, ci chunkInfo, fresh []int, opaque, empty bool) ([][]byte, []jentry, *automerge.Doc, error) {
	if opaque {
		return d.streamChanges(data, ci, empty)
	}
	payloads, added := make([][]byte, len(fresh)), make([]jentry, len(fresh))
	for j, i := range fresh {
		c := ci.changes[i]
		payloads[j] = ci.payloads[i]
		added[j] = jentry{hash: c.Hash, deps: sortedHeads(slices.Clone(c.Deps)), payload: ci.payloads[i]}
	}
	return payloads, added, nil, nil
}

// checkApplied checks, after LoadIncremental, that the document took
// exactly what the stream holds, and returns its new heads. On an error
// the caller rolls back.
//
// automerge-go's LoadIncremental drops, without an error, a chunk it
// cannot parse and everything after it, and it silently queues a change
// whose dependencies are missing. Check that everything arrived: the
// fresh changes no other fresh change depends on are enough, as a
// document holds every ancestor of what it holds.
func (d *Doc) checkApplied(ci chunkInfo, fresh []int, added []jentry, opaque bool) (Heads, error) {
	after := d.Heads()
	if err := d.checkArrived(ci, fresh, after); err != nil {
		return nil, err
	}
	for _, h := range ci.docHeads {
		if !d.Has(h) {
			return nil, fmt.Errorf("%w: document chunk with head %s was not applied", ErrCorrupt, h)
		}
	}
	if !d.journalImported(added, after) && opaque {
		// Some change was applied that is not in the stream's chunks (or
		// one of them was not).
		return nil, fmt.Errorf("%w: the stream applied other changes than its chunks hold: heads %v", ErrCorrupt, after)
	}
	if opaque {
		idx, err := d.seqIndex()
		if err != nil {
			return nil, err
		}
		for actor, s := range idx {
			if s.count != s.max {
				return nil, fmt.Errorf("%w: actor %s has %d changes numbered up to %d", ErrCorrupt, actor, s.count, s.max)
			}
		}
	}
	return after, nil
}

// freshChanges returns the indexes (in ci.changes) of the changes d does
// not hold, in stream order, and the first index of each hash in the
// stream. Unless opaque, a fresh change whose dependencies are neither in
// d nor earlier in the stream is an ErrMissingDeps.
//
// Has is a call into automerge, costly next to the rest, so it is spared:
// a change is held if a held change depends on it, and is fresh if it
// depends on a fresh one. The changes nothing in the stream depends on are
// asked first, so a stream d already holds costs one call per branch.
func (d *Doc) freshChanges(ci chunkInfo, opaque bool) ([]int, map[Hash]int, error) {
	const (
		unasked = iota
		held
		isFresh
	)
	inStream := make(map[Hash]int, len(ci.changes))
	for i, c := range ci.changes {
		if _, dup := inStream[c.Hash]; !dup {
			inStream[c.Hash] = i
		}
	}
	state := make([]uint8, len(ci.changes))
	dependedOn := make([]bool, len(ci.changes))
	for _, c := range ci.changes {
		for _, dep := range c.Deps {
			if j, ok := inStream[dep]; ok {
				dependedOn[j] = true
			}
		}
	}
	var stack []int
	for i, c := range ci.changes {
		if inStream[c.Hash] != i || dependedOn[i] {
			continue
		}
		if !d.Has(c.Hash) {
			state[i] = isFresh
			continue
		}
		// Held, and so is its history.
		for stack = append(stack[:0], i); len(stack) > 0; {
			j := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if state[j] == held {
				continue
			}
			state[j] = held
			for _, dep := range ci.changes[j].Deps {
				if k, ok := inStream[dep]; ok && state[k] != held {
					stack = append(stack, k)
				}
			}
		}
	}
	var fresh []int
	for i, c := range ci.changes {
		if inStream[c.Hash] != i || state[i] == held {
			continue
		}
		depFresh := false
		for _, dep := range c.Deps {
			if j, ok := inStream[dep]; ok && j < i {
				depFresh = depFresh || state[j] == isFresh
				continue
			}
			if !opaque && !d.Has(dep) {
				return nil, nil, fmt.Errorf("%w: %s needs %s", ErrMissingDeps, c.Hash, dep)
			}
		}
		if state[i] == unasked && !depFresh && d.Has(c.Hash) {
			state[i] = held
			continue
		}
		state[i] = isFresh
		fresh = append(fresh, i)
	}
	return fresh, inStream, nil
}

// journalImported records in the journal the changes an Import added
// (none held before it, each after its dependencies, each with its payload
// as the stream held it), which took the document from the journal's tip
// (its heads before the Import) to heads.
// It reports whether they did: the heads must be what the tip and the
// added changes make, for then the document holds exactly the tip's
// changes and the added ones. Otherwise the journal starts again.
func (d *Doc) journalImported(added []jentry, heads Heads) bool {
	want := make(map[Hash]bool, len(d.jn.tip)+1)
	for _, h := range d.jn.tip {
		want[h] = true
	}
	for _, e := range added {
		for _, dep := range e.deps {
			delete(want, dep)
		}
		want[e.hash] = true
	}
	ok := len(want) == len(heads)
	for _, h := range heads {
		ok = ok && want[h]
	}
	if !ok {
		d.jn.restart(heads)
		return false
	}
	// The payloads are slices of the caller's bytes: the journal keeps
	// copies, of as many as it has room for.
	room := maxJournalBytes - d.jn.bytes
	for i := range added {
		if p := added[i].payload; len(p) <= room {
			added[i].payload = bytes.Clone(p)
			room -= len(p)
		} else {
			added[i].payload, room = nil, 0
		}
	}
	d.jn.add(added, heads)
	return true
}

// checkArrived checks, after a load, that d holds every fresh change.
//
// A fresh change that no other fresh change depends on is one of the
// document's heads once applied (nothing it held before could depend on
// it), so heads, the document's after the load, answer for most without
// a call into Automerge; one that is not among them is asked.
func (d *Doc) checkArrived(ci chunkInfo, fresh []int, heads Heads) error {
	needed := make(map[Hash]bool, len(fresh))
	for _, i := range fresh {
		for _, dep := range ci.changes[i].Deps {
			needed[dep] = true
		}
	}
	missing := false
	for _, i := range fresh {
		if h := ci.changes[i].Hash; !needed[h] && !slices.Contains(heads, h) && !d.Has(h) {
			missing = true
			break
		}
	}
	if !missing {
		return nil
	}
	// Find the first one missing, and why.
	for _, i := range fresh {
		c := ci.changes[i]
		if d.Has(c.Hash) {
			continue
		}
		for _, dep := range c.Deps {
			if !d.Has(dep) {
				return fmt.Errorf("%w: %s needs %s", ErrMissingDeps, c.Hash, dep)
			}
		}
		return fmt.Errorf("%w: change %s could not be applied", ErrCorrupt, c.Hash)
	}
	return fmt.Errorf("%w: a change could not be applied", ErrCorrupt)
}

// checkAuthors checks, before they are applied, that the fresh changes each
// continue their actor's numbering: an actor's changes are numbered 1, 2, 3
// with no gap. automerge-go accepts a gap, and then saves a document that it
// cannot load ("changes out of order"). (A number already taken is refused
// by automerge-go itself.)
func (d *Doc) checkAuthors(ci chunkInfo, fresh []int, inStream map[Hash]int) error {
	top := map[string]uint64{} // highest number among the fresh changes so far
	var idx map[string]actorSeqs
	for _, i := range fresh {
		c, who := ci.changes[i], ci.authors[i]
		prev := author{actor: who.actor, seq: who.seq - 1}
		// Usually the actor's previous change is the one before in the stream,
		// or a direct dependency.
		ok := who.seq == 1 || top[who.actor] == prev.seq
		for _, dep := range c.Deps {
			if ok {
				break
			}
			if j, in := inStream[dep]; in {
				ok = ci.authors[j] == prev
			} else if ch, err := d.live().Change(automerge.ChangeHash(dep)); err == nil {
				ok = ch.ActorSeq() == prev.seq && ch.ActorID() == prev.actor
			}
		}
		if !ok {
			if idx == nil {
				var err error
				if idx, err = d.seqIndex(); err != nil {
					return err
				}
			}
			ok = max(idx[who.actor].max, top[who.actor]) == prev.seq
		}
		if !ok {
			return fmt.Errorf("%w: change %s is number %d of actor %s, which has no change %d", ErrCorrupt, c.Hash, who.seq, who.actor, prev.seq)
		}
		top[who.actor] = max(top[who.actor], who.seq)
	}
	return nil
}

// actorSeqs is what the document holds of one actor's changes.
type actorSeqs struct {
	count uint64 // how many
	max   uint64 // the highest sequence number
}

// seqIndex returns, per actor, how many changes the document holds and the
// highest sequence number among them, bringing the index up to date with
// the changes made or imported since it was last used.
func (d *Doc) seqIndex() (map[string]actorSeqs, error) {
	heads := d.Heads()
	if d.seqs != nil && heads.Equal(d.seqsAt) {
		return d.seqs, nil
	}
	chs, ok, err := d.journalChanges(d.seqsAt, heads)
	if err == nil && !ok {
		// Counted from the whole history: Automerge's changes since
		// seqsAt may hold one counted already (see changesSince).
		d.seqs = nil
		d.historyWalks++
		chs, err = d.live().Changes()
	}
	if err != nil {
		d.seqs, d.seqsAt = nil, nil
		return nil, fmt.Errorf("crdt: changes: %w", err)
	}
	if d.seqs == nil {
		d.seqs = make(map[string]actorSeqs)
	}
	for _, c := range chs {
		a := c.ActorID()
		s := d.seqs[a]
		s.count++
		s.max = max(s.max, c.ActorSeq())
		d.seqs[a] = s
	}
	d.seqsAt = heads
	return d.seqs, nil
}

// loadIncremental applies framed bytes, turning automerge's errors and
// panics into ErrCorrupt or ErrMissingDeps.
func (d *Doc) loadIncremental(data []byte) (err error) {
	defer recoverCorrupt(&err)
	if err := d.live().LoadIncremental(data); err != nil {
		if strings.Contains(err.Error(), "deps") {
			// Only reachable through document chunks, whose dependencies
			// framing does not list.
			return fmt.Errorf("%w: %v", ErrMissingDeps, err)
		}
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return nil
}

// adopt makes am, a document loaded on its own, the document's Automerge
// state, in place of its empty one, keeping the document's actor. Applying
// a whole document to an empty one loads it the same way.
func (d *Doc) adopt(am *automerge.Doc) error {
	if err := am.SetActorID(d.Actor()); err != nil {
		freeAM(am)
		return fmt.Errorf("crdt: %w", err)
	}
	old := d.am
	d.am = am
	freeAM(old)
	return nil
}

// Reset returns the document to heads, dropping every change after them:
// for undoing an import that succeeded but must not stand (its caller
// refused it for reasons of its own). It replays the history up to heads,
// so it costs in proportion to the document's history.
func (d *Doc) Reset(heads Heads) error {
	if err := d.hasAll(heads); err != nil {
		return err
	}
	return d.rollback(heads, nil)
}

// rollback returns the document to heads after a failed import and returns
// cause. automerge applies a stream change by change, so a failure can leave
// part of it applied, and it keeps a change whose dependencies are missing
// in a hidden queue (which Save writes out) even when the heads do not
// move: the document is always rebuilt. Rebuilding replays the history,
// which is slow, but only failed imports pay for it.
func (d *Doc) rollback(heads Heads, cause error) error {
	d.seqs, d.seqsAt = nil, nil
	actor := d.Actor()
	var am *automerge.Doc
	if len(heads) == 0 {
		// Fork with no heads would copy the current state, not the empty one.
		am = automerge.New()
	} else {
		var err error
		if am, err = d.live().Fork(amHashes(heads)...); err != nil {
			return errors.Join(cause, fmt.Errorf("crdt: rollback failed: %w", err))
		}
	}
	if err := am.SetActorID(actor); err != nil {
		freeAM(am)
		return errors.Join(cause, fmt.Errorf("crdt: rollback failed: %w", err))
	}
	old := d.am
	d.am = am
	d.idx.Store(nil) // it may describe operations the rollback dropped
	freeAM(old)      // the state dropped: nothing else refers to it
	d.jn.restart(d.Heads())
	return cause
}
