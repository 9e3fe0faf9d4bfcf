package amrepo

import (
	"encoding/binary"
	"fmt"

	"github.com/ferrysync/ferry/crdt"
)

// A peer's sync message may carry a change without a change it depends
// on: the peer skips changes the relay's bloom filter says it holds, and
// a bloom filter has false positives (about 1% of changes). automerge
// queues such a change and asks for what is missing in its next message's
// need list; the relay does the same, since the push path (rightly)
// refuses changes with missing dependencies. The waiting changes are kept
// per connection and document, bounded by max_record bytes, and pushed
// with the changes that complete them.

// pendingChanges splits chunks (the document's waiting changes, then the
// message's) into an order the push path takes, dependencies first, and
// reports the dependencies neither the document nor chunks hold. A stream
// with a whole document in it (a version 2 message) is taken as it is:
// it is checked when imported. Framing inflates within budget (the
// chunks' compressed changes, and a whole document's compressed
// columns), failing with crdt.ErrInflateLimit past it.
func pendingChanges(doc *crdt.Doc, chunks [][]byte, budget *crdt.InflateBudget) (ordered [][]byte, missing []crdt.Hash, err error) {
	type change struct {
		data []byte
		info crdt.ChangeInfo
	}
	byHash := map[crdt.Hash]*change{}
	var order []*change
	for _, ch := range chunks {
		infos, err := crdt.ParseChangesWithin(ch, budget)
		if err != nil {
			return nil, nil, err
		}
		if len(infos) != 1 {
			return chunks, nil, nil // a document, or several changes in one chunk
		}
		c := &change{data: ch, info: infos[0]}
		if _, dup := byHash[c.info.Hash]; !dup {
			byHash[c.info.Hash] = c
			order = append(order, c)
		}
	}
	seen := map[crdt.Hash]bool{}
	missingSet := map[crdt.Hash]bool{}
	var visit func(c *change)
	visit = func(c *change) {
		if seen[c.info.Hash] {
			return
		}
		seen[c.info.Hash] = true
		for _, dep := range c.info.Deps {
			if d, ok := byHash[dep]; ok {
				visit(d)
			} else if !doc.Has(dep) && !missingSet[dep] {
				missingSet[dep] = true
				missing = append(missing, dep)
			}
		}
		ordered = append(ordered, c.data)
	}
	for _, c := range order {
		visit(c)
	}
	return ordered, missing, nil
}

func chunksSize(chunks [][]byte) int {
	n := 0
	for _, c := range chunks {
		n += len(c)
	}
	return n
}

// withNeed adds hashes to the need list of a sync message the relay
// generated.
func withNeed(msg []byte, need []crdt.Hash) ([]byte, error) {
	sm, err := parseSyncMessage(msg)
	if err != nil {
		return nil, fmt.Errorf("relay: generated sync message: %w", err)
	}
	have := map[crdt.Hash]bool{}
	for _, h := range sm.need {
		have[h] = true
	}
	for _, h := range need {
		if !have[h] {
			sm.need = append(sm.need, h)
		}
	}
	out := sm.encodeV1()
	out = out[:len(out)-1] // encodeV1 ends with a count of no changes
	out = binary.AppendUvarint(out, uint64(len(sm.changes)))
	for _, c := range sm.changes {
		out = binary.AppendUvarint(out, uint64(len(c)))
		out = append(out, c...)
	}
	return out, nil
}
