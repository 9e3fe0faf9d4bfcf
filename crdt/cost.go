package crdt

import "fmt"

// An Automerge document's memory bears no fixed relation to its saved
// bytes: the saved form compresses its columns, while the loaded document
// keeps every operation in a tree per object, each object's tree with its
// own nodes, and the history of changes besides. A record of many small
// maps takes tens of times its saved size; a record of long strings about
// its saved size. Cost therefore counts what the document holds, from the
// changes it decodes anyway to index them, and estimates its memory from
// that with constants measured against the process's resident memory (see
// TestCostCalibration and docs/operations.md, "Memory").

// Bytes of resident memory per item a loaded and indexed document holds,
// fitted by TestCostCalibration to records of four shapes (many small
// maps in a list, one field rewritten by thousands of changes, a long
// list, thousands of fields) with automerge-go v0.0.0-20230903201930 on
// linux/amd64. An operation costs about the same whether it makes an
// object or sets a value in one (some 600 bytes in Automerge, before
// Ferry's index); a key written for the first time adds its entry in the
// map's index; each change its entry in the history, and what the history
// walk that builds the index leaves behind. The Go-side indexes (memSize)
// are counted twice over, for the garbage collector's headroom
// (GOGC=100).
const (
	costPerDoc    = 8 << 10
	costPerChange = 1000
	costPerOp     = 780
	costPerKey    = 150
	costGoFactor  = 2
	// costPerValueKiB is the resident memory per KiB of values set: a
	// loaded document keeps each value in its operations and again in the
	// change that set it (a field rewritten 40 times with 64 KiB took 2.4
	// times the values' bytes).
	costPerValueKiB = 2450
)

// costPerDeferred is the Go heap a deferred document takes beyond what
// memSize counts of it: the Doc, its ledger, and their maps' smallest
// tables (a deferred document of one 5-field change took 3,081 bytes of
// heap, of which memSize counts 1,259).
const costPerDeferred = 2 << 10

// held counts what a set of changes holds.
type held struct {
	changes, ops, keys, objects int
	values                      int64 // bytes of the values the operations set (their value column)
}

func (h *held) count(c *change) {
	h.changes++
	h.ops += len(c.ops)
	for _, op := range c.ops {
		if op.action <= 0xff && isMake(uint8(op.action)) {
			h.objects++
		}
		if op.kind == keyProp && len(op.pred) == 0 {
			h.keys++
		}
	}
	h.values += int64(c.valueBytes)
}

func (h *held) add(o held) {
	h.changes += o.changes
	h.ops += o.ops
	h.keys += o.keys
	h.objects += o.objects
	h.values += o.values
}

// Values cost memory as operations do: a loaded document holds every value
// its history ever set, overwritten or not, uncompressed, however small
// the compressed changes or saved document that carried them. For the
// operation limit (SetMaxOps), valueBytesPerOp bytes of values count as
// one operation, the bytes whose memory (costPerValueKiB) is what an
// operation's is (costPerOp): a limit of n operations then bounds what a
// record costs loaded, values included, to about n operations' worth.
const valueBytesPerOp = costPerOp * 1024 / costPerValueKiB

// weight is what ops operations setting values bytes of values count for
// against an operation limit.
func weight(ops int, values int64) int {
	return ops + int(min(values/valueBytesPerOp, int64(maxInt-ops)))
}

// changeWeight is weight of c's operations and values.
func changeWeight(c *change) int { return weight(len(c.ops), int64(c.valueBytes)) }

// Cost is what a loaded document holds, which its memory follows, and the
// memory that is estimated to take.
type Cost struct {
	Changes int   // changes in its history
	Ops     int   // operations of those changes, deletes included
	Keys    int   // of those, writes to a map key that had no value
	Objects int   // maps, lists and texts those changes made (they cost as operations do)
	Values  int64 // bytes of the values those operations set (strings, bytes, floats), overwritten ones included
	// Bytes estimates the memory the loaded document takes: Automerge's
	// (outside Go's heap) and the Go-side indexes, its operation index
	// included. For a deferred document (see NewDeferred), it is what the
	// document will take once built.
	Bytes int64
	// Current is the memory the document takes as it is: Bytes, but for a
	// deferred document, until it is built, the Go memory of its ledger
	// and of the changes it keeps to build from (counted as Bytes counts
	// Go memory), some tenth of Bytes for a record of many small objects.
	Current int64
}

// Cost returns what the document holds and the memory it is estimated to
// take. The first call on a loaded document indexes its history, as its
// first Import would (the index is kept for Import). It fails if a change
// in the history cannot be decoded.
func (d *Doc) Cost() (Cost, error) {
	if d.def != nil {
		c := costOf(d.def.led.heldCount(), d.memSize())
		c.Current = costGoFactor * int64(costPerDeferred+d.memSize())
		return c, nil
	}
	x, err := d.fullIndex(d.Heads())
	if err != nil {
		return Cost{}, err
	}
	var h held
	for l := x.top; l != nil; l = l.parent {
		h.add(l.held)
	}
	return costOf(h, d.memSize()), nil
}

func costOf(h held, goBytes int) Cost {
	c := Cost{
		Changes: h.changes,
		Ops:     h.ops,
		Keys:    h.keys,
		Objects: h.objects,
		Values:  h.values,
		Bytes: costPerDoc + int64(h.changes)*costPerChange + int64(h.ops)*costPerOp +
			int64(h.keys)*costPerKey + h.values*costPerValueKiB/1024 + costGoFactor*int64(goBytes),
	}
	c.Current = c.Bytes
	return c
}

// SetMaxOps makes Import refuse, with [ErrOpLimit] and before applying
// anything, changes that would bring the document past n operations (as
// Cost counts them, with every 326 bytes of the values they set counted
// as one more: a value costs its bytes once loaded, however well it
// compresses), so that what the document costs to hold and to load stays
// known. Zero or less: no limit. A document already past n stays
// readable; only what would grow it is refused.
func (d *Doc) SetMaxOps(n int) {
	d.maxOps = max(n, 0)
	if d.def != nil {
		d.def.led.maxOps = d.maxOps
	}
}

// checkOpLimit refuses checked changes that would bring the document past
// its operation limit. Without an index (a history that does not decode)
// only the changes are counted.
func (d *Doc) checkOpLimit(base *opIndex, v verified) error {
	if d.maxOps == 0 {
		return nil
	}
	n := v.ops
	if base != nil {
		for l := base.top; l != nil; l = l.parent {
			n += weight(l.held.ops, l.held.values)
		}
	}
	if n > d.maxOps {
		return fmt.Errorf("%w: %d operations, values counted, over %d", ErrOpLimit, n, d.maxOps)
	}
	return nil
}

// checkDocOps refuses a stream holding a whole document of more
// operations than the document's limit before anything loads it: reading
// a document chunk's changes loads it on its own, which costs what its
// operations cost.
func (d *Doc) checkDocOps(ci chunkInfo) error {
	if d.maxOps > 0 && ci.docOps > uint64(d.maxOps) {
		return fmt.Errorf("%w: a whole document of %d operations, over %d", ErrOpLimit, ci.docOps, d.maxOps)
	}
	return nil
}
