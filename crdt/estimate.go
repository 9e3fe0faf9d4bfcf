package crdt

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Estimate returns what loading b (a saved document, changes, or both, as
// Load and Import take them) is estimated to cost in memory, counted from
// its chunks without loading anything into Automerge, so that a caller can
// reserve the memory before it takes it. Changes are counted as Cost
// counts them, from their headers and three of their columns; their
// operations are not checked (Import checks them), so a change that would
// not import may still be counted. A whole document is counted by its changes and
// operations; the keys it first writes are not decoded, and every one of
// its operations is counted as one (so a document is estimated up to a
// sixth higher than Cost says once it is loaded). Compressed chunks and
// columns are inflated within budget (nil: the fixed bound per chunk).
//
// For changes imported into a loaded document, Estimate bounds what they
// add to its Cost.
func Estimate(b []byte, budget *InflateBudget) (Cost, error) {
	ci, err := frameWithin(b, budget)
	if err != nil {
		return Cost{}, err
	}
	return estimateFramed(b, ci)
}

// estimateFramed is Estimate of b, framed as ci.
func estimateFramed(b []byte, ci chunkInfo) (Cost, error) {
	var h held
	goBytes, indexed := 0, 0
	for _, p := range ci.payloads {
		ch, deps, err := countChange(p)
		if err != nil {
			return Cost{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		h.add(ch)
		indexed += ch.ops
		goBytes += 2*HashSize + 24 + deps*HashSize
	}
	if ci.documents > 0 {
		changes, values, err := documentCounts(b)
		if err != nil {
			return Cost{}, err
		}
		ops := int(min(ci.docOps, uint64(maxInt)))
		h.add(held{changes: changes, ops: ops, keys: ops, values: values})
		indexed += ops
		goBytes += changes * (2*HashSize + 24)
	}
	return costOf(h, goBytes+indexBytes(indexed)), nil
}

// indexBytes bounds the Go memory an operation index of n operations
// takes: a map's entries, or, from packMin on, a packed layer's record
// and run per operation (see oppacked.go; an operation has a run of its
// own at worst) and a string header per operation for its map key, which
// each may write for the first time.
func indexBytes(n int) int {
	if n < packMin {
		return n * opEntryBytes
	}
	return n * packedOpBytes
}

const packedOpBytes = 64

const maxInt = int(^uint(0) >> 1)

// documentCounts counts, in the whole-document chunks of b, which
// frameWithin has checked, their changes and the bytes of the values their
// operations set (see documentCount).
func documentCounts(b []byte) (changes int, values int64, err error) {
	for off := 0; off < len(b); {
		rest := b[off:]
		size, ln := binary.Uvarint(rest[9:])
		end := 9 + ln + int(size)
		if rest[8] == chunkDocument {
			c, v, err := documentCount(rest[9+ln : end])
			if err != nil {
				return 0, 0, fmt.Errorf("%w: document at byte %d: %v", ErrCorrupt, off, err)
			}
			changes += c
			values += v
		}
		off += end
	}
	return changes, values, nil
}

// documentCount counts a document chunk's changes (the rows of its first
// actor column among its change columns: each change's author) and the
// bytes of its value column, which holds every value its operations set.
// A compressed value column is inflated to count it, not kept: a document
// whose values compress to almost nothing costs what they inflate to once
// loaded, and an estimate must say so before anything loads it.
func documentCount(p []byte) (changes int, values int64, err error) {
	_, p, err = actorTable(p)
	if err != nil {
		return 0, 0, err
	}
	if _, p, err = hashList(p, "heads"); err != nil {
		return 0, 0, err
	}
	changeCols, p, err := columnMeta(p)
	if err != nil {
		return 0, 0, err
	}
	opCols, p, err := columnMeta(p)
	if err != nil {
		return 0, 0, err
	}
	take := func(c column) ([]byte, error) {
		if c.size > uint64(len(p)) {
			return nil, errors.New("columns overrun the chunk")
		}
		data := p[:c.size]
		p = p[c.size:]
		return data, nil
	}
	counted := false
	for _, c := range changeCols {
		data, err := take(c)
		if err != nil {
			return 0, 0, err
		}
		if !counted && c.spec&colTypeMask == colTypeActor {
			if changes, err = countRows(data, c.spec); err != nil {
				return 0, 0, err
			}
			counted = true
		}
	}
	for _, c := range opCols {
		data, err := take(c)
		if err != nil {
			return 0, 0, err
		}
		if c.spec&^colDeflate == specValue {
			n, err := columnLen(data, c.spec)
			if err != nil {
				return 0, 0, fmt.Errorf("column %#x: %w", c.spec, err)
			}
			values += n
		}
	}
	return changes, values, nil
}

// countRows counts the values of an RLE column (data, compressed if spec
// says so).
func countRows(data []byte, spec uint64) (int, error) {
	if spec&colDeflate != 0 {
		var err error
		if data, err = (*InflateBudget)(nil).inflate(data); err != nil {
			return 0, err
		}
	}
	r := rleRuns{b: data}
	n := uint64(0)
	for {
		run, ok := r.next()
		if r.err != nil {
			return 0, r.err
		}
		if !ok {
			return int(min(n, uint64(maxInt))), nil
		}
		n += run.n
	}
}

// columnLen is the length of a column once inflated (data, compressed if
// spec says so), counted as it inflates: at least maxInflated for one that
// inflates past it, as loading it takes that much.
func columnLen(data []byte, spec uint64) (int64, error) {
	if spec&colDeflate == 0 {
		return int64(len(data)), nil
	}
	n, err := inflatedSize(data, maxInflated)
	if errors.Is(err, errInflatesPast) {
		return maxInflated, nil
	}
	return n, err
}

// Remaining returns the bytes the budget may still inflate.
func (b *InflateBudget) Remaining() int64 { return b.remaining() }

// countChange counts a change payload as held.count counts it decoded,
// and its dependencies, reading only the three columns that takes (the
// actions, the keys' strings and the predecessors' counts) rather than
// decoding every operation: an estimate is made of every pushed change
// before it is checked, and decoding it twice cost as much again. The
// header and the column layout are checked as decodeChange checks them;
// the operations are not, so a change that would not decode may be
// counted (Import refuses it). For one that decodes, the counts are the
// same: an operation writes a map key when its key string is set (the
// key's actor and counter are then null), and first writes it when it
// has no predecessors.
func countChange(payload []byte) (held, int, error) {
	c := getChange()
	defer putChange(c)
	cols, err := c.decodeLayout(payload)
	if err != nil {
		return held{}, 0, err
	}
	action := newRLE[uint64](cols.get(specAction))
	keys := newRLE[string](cols.get(specKeyString))
	preds := newRLE[uint64](cols.get(specPredGroup))
	h := held{changes: 1, values: int64(len(cols.get(specValue)))}
	for {
		act, null, ok := action.next()
		if err := action.err(); err != nil {
			return held{}, 0, fmt.Errorf("action column: %w", err)
		}
		if !ok {
			return h, len(c.deps), nil
		}
		if null {
			return held{}, 0, fmt.Errorf("operation %d: null action", h.ops)
		}
		h.ops++
		if act <= 0xff && isMake(uint8(act)) {
			h.objects++
		}
		_, kNull, kOK := keys.next()
		n, pNull, pOK := preds.next()
		if err := errors.Join(keys.err(), preds.err()); err != nil {
			return held{}, 0, fmt.Errorf("operation %d: %w", h.ops-1, err)
		}
		if kOK && !kNull && pOK && !pNull && n == 0 {
			h.keys++
		}
	}
}
