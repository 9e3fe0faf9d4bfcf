package crdt

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/automerge/automerge-go"
)

// verified is what Import learns by checking changes before it applies
// them, to record once they are applied.
type verified struct {
	base   *opIndex
	layer  *opLayer       // the checked changes' operations, and those of base's unread changes they named
	unread []unreadChange // base's unread changes left unread
	reload bool           // the index was unavailable: check by saving and loading
	ops    int            // operations of the checked changes, weighted by their values (changeWeight)
}

// verifyChanges checks change payloads (with their hashes, in the order
// Automerge will apply them) before they are applied: each must be in
// Automerge's canonical encoding, and refer only to operations the
// document holds, so that the document's saved form will rebuild it. The
// error is an ErrCorrupt naming the change and the fault.
// base is the document's index before the changes (nil if unavailable).
// A change of the document that the checks needed and that cannot be
// decoded gives errUnreadable: the index is unavailable.
func verifyChanges(base *opIndex, payloads [][]byte, changes []jentry) (verified, error) {
	v := verified{base: base, reload: base == nil}
	if base != nil {
		v.layer = newLayer(base.top)
		v.unread = base.unread
	}
	c := getChange()
	defer putChange(c)
	for i, p := range payloads {
		if err := v.check(c, p, changes[i].hash); err != nil {
			return verified{}, err
		}
	}
	return v, nil
}

// check checks one change payload, with hash, as verifyChanges does,
// decoding it into c (whose slices it reuses; the index keeps none of
// them), and counts its operations.
func (v *verified) check(c *change, payload []byte, hash Hash) error {
	err := c.checkCanonical(payload)
	if err == nil && v.layer != nil {
		// The change can refer only to operations of the actors it
		// names: the document's unread changes by them are read first.
		if len(v.unread) > 0 {
			if v.unread, err = readUnread(v.layer, v.unread, c.actorStrings()); err != nil {
				return err
			}
		}
		err = v.layer.check(c)
	}
	if err != nil {
		return fmt.Errorf("%w: change %s: %v", ErrCorrupt, hash, err)
	}
	v.ops += changeWeight(c)
	return nil
}

// recordVerified finishes what verifyChanges began, once the changes are
// applied: their operations join the index, or, if the index was
// unavailable, the document must survive saving and loading.
func (d *Doc) recordVerified(v verified, heads Heads) error {
	if v.reload {
		if _, err := Load(d.Save(), ""); err != nil {
			return fmt.Errorf("%w: the changes leave a document that does not reload: %v", ErrCorrupt, err)
		}
		return nil
	}
	d.idx.Store(&opIndex{top: pushLayer(v.base.top, v.layer), at: heads, unread: v.unread})
	return nil
}

// streamChanges returns the payloads, hashes and dependencies of the changes a framed
// stream holding document chunks will add to the document, in the order
// Automerge applies them. A document chunk holds its whole history, so its
// changes are read by loading it on its own: they are checked before the
// document sees them, as some crafted ones crash the Rust core when
// applied to a document that holds others.
//
// If the document is empty (no heads) and the stream is one document
// chunk, that load is what applying the stream would make, and it is
// returned as loaded, for the import to take in place of applying the
// stream again; otherwise loaded is nil.
func (d *Doc) streamChanges(data []byte, ci chunkInfo, empty bool) (payloads [][]byte, added []jentry, loaded *automerge.Doc, err error) {
	seen := map[Hash]bool{}
	has := func(h Hash) bool { return seen[h] || (!empty && d.Has(h)) }
	add := func(h Hash, deps []Hash, p []byte) error {
		if has(h) {
			return nil
		}
		for _, dep := range deps {
			if !has(dep) {
				return fmt.Errorf("%w: %s needs %s", ErrMissingDeps, h, dep)
			}
		}
		seen[h] = true
		payloads = append(payloads, p)
		added = append(added, jentry{hash: h, deps: sortedHeads(slices.Clone(deps)), payload: p})
		return nil
	}
	defer func() {
		if err != nil && loaded != nil {
			freeAM(loaded)
			loaded = nil
		}
	}()
	next := 0 // the next change chunk, in ci
	for off := 0; off < len(data); {
		n, ln := binary.Uvarint(data[off+9:]) // framed already
		end := off + 9 + ln + int(n)
		if data[off+8] != chunkDocument {
			c := ci.changes[next]
			if err := add(c.Hash, c.Deps, ci.payloads[next]); err != nil {
				return nil, nil, nil, err
			}
			next++
			off = end
			continue
		}
		am, chs, err := documentChanges(data[off:end])
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%w: document at byte %d: %v", ErrCorrupt, off, err)
		}
		if empty && off == 0 && end == len(data) {
			loaded = am // freed by the deferred call on an error
		}
		for _, ch := range chs {
			deps := make([]Hash, len(ch.Dependencies()))
			for i, dep := range ch.Dependencies() {
				deps[i] = Hash(dep)
			}
			if err := add(Hash(ch.Hash()), deps, chunkPayload(ch.Save())); err != nil {
				if loaded == nil {
					freeAM(am)
				}
				return nil, nil, nil, err
			}
		}
		if loaded == nil {
			freeAM(am) // its changes are read: chs refer to it
		}
		off = end
	}
	return payloads, added, loaded, nil
}

// documentChanges returns one document chunk loaded on its own, and its
// changes in the order it holds them.
func documentChanges(chunk []byte) (am *automerge.Doc, chs []*automerge.Change, err error) {
	defer recoverCorrupt(&err)
	if am, err = automerge.Load(chunk); err != nil {
		return nil, nil, err
	}
	if chs, err = am.Changes(); err != nil {
		freeAM(am)
		return nil, nil, err
	}
	return am, chs, nil
}
