package crdt

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// Automerge keeps the bytes of each change it applies, but a saved document
// holds no change bytes: Load rebuilds every change from the operations in
// the document and checks the rebuilt change's hash. A change that was not
// in the encoding Automerge itself writes rebuilds to other bytes, and the
// document no longer loads. checkCanonical decodes a change the way the
// bundled Rust core does, encodes what the core would keep of it the way
// the core's ChangeBuilder does (rust/automerge/src/storage/change.rs and
// change/change_op_columns.rs, automerge 0.5), and refuses the change unless
// the two are the same bytes. What the rebuild also needs from the document
// (the operations a change refers to) is checked by opindex.go.

// checkCanonical decodes a change payload and checks that Automerge would
// rebuild it byte for byte. The error says what differs.
func checkCanonical(payload []byte) (*change, error) {
	c := &change{}
	if err := c.checkCanonical(payload); err != nil {
		return nil, err
	}
	return c, nil
}

// checkCanonical is checkCanonical decoding into c, whose slices it
// reuses (see changePool).
func (c *change) checkCanonical(payload []byte) error {
	if err := c.decode(payload); err != nil {
		return err
	}
	if err := c.namedFaults(); err != nil {
		return err
	}
	e := opEncoders.Get().(*opEncoder)
	defer e.release()
	deps, others, ops := c.canonicalPartsIn(e)
	cols := e.encode(ops)
	if c.rebuildsTo(payload, deps, others, cols, e) {
		return nil
	}
	return c.difference(c.assembleHeader(deps, others), cols)
}

// changePool holds decoded changes for checks that drop them once done
// (the ledger's): decoding into one reuses its operations and other
// slices. A change whose slices grew past what a small change needs is
// not kept, so the pool holds no large change's memory.
var changePool = sync.Pool{New: func() any { return new(change) }}

// pooledChangeOps bounds the operations (and predecessors) of a change
// changePool keeps.
const pooledChangeOps = 256

func getChange() *change { return changePool.Get().(*change) }

// putChange returns c to changePool. Nothing may use c, or what its
// slices hold, after: the next decode into it overwrites them.
func putChange(c *change) {
	if cap(c.ops) > pooledChangeOps || cap(c.predBuf) > 4*pooledChangeOps || cap(c.deps) > pooledChangeOps || cap(c.others) > pooledChangeOps {
		return
	}
	// What points into the payload (values, actors, columns) is
	// cleared, so that a pooled change does not keep a push's bytes.
	clear(c.ops)
	clear(c.others)
	clear(c.cols)
	*c = change{deps: c.deps[:0], others: c.others[:0], ops: c.ops[:0], cols: c.cols[:0], predBuf: c.predBuf[:0]}
	changePool.Put(c)
}

// rebuildsTo reports whether payload is what assemble writes from these
// parts (bytes.Equal(c.assemble(deps, others, cols), payload)), compared
// part by part rather than written out whole: c was decoded from payload,
// so its header, column data and trailing bytes are slices of it, in
// order.
func (c *change) rebuildsTo(payload []byte, deps []Hash, others [][]byte, cols []encodedColumn, e *opEncoder) bool {
	e.buf = c.appendHeader(e.buf[:0], deps, others)
	rest, ok := bytes.CutPrefix(payload, e.buf)
	if !ok {
		return false
	}
	e.buf = appendULEB(e.buf[:0], uint64(len(cols)))
	for _, col := range cols {
		e.buf = appendULEB(e.buf, col.spec)
		e.buf = appendULEB(e.buf, uint64(len(col.data)))
	}
	if rest, ok = bytes.CutPrefix(rest, e.buf); !ok {
		return false
	}
	for _, col := range cols {
		if rest, ok = bytes.CutPrefix(rest, col.data); !ok {
			return false
		}
	}
	return bytes.Equal(rest, c.extra)
}

// difference names the first part of the change that differs from what
// Automerge would write.
func (c *change) difference(header []byte, cols []encodedColumn) error {
	const noncanonical = "is not in Automerge's canonical encoding"
	if !bytes.Equal(header, c.header) {
		n := 0
		for n < len(header) && n < len(c.header) && header[n] == c.header[n] {
			n++
		}
		return fmt.Errorf("%s %s (byte %d)", c.sectionAt(n), noncanonical, n)
	}
	specs := func(cols []encodedColumn) []uint64 {
		out := make([]uint64, len(cols))
		for i, col := range cols {
			out[i] = col.spec
		}
		return out
	}
	if got, want := specs(c.cols), specs(cols); !slices.Equal(got, want) {
		return fmt.Errorf("the change has columns %#x where Automerge would write %#x (in that order, and no empty ones)", got, want)
	}
	for i, col := range cols {
		if !bytes.Equal(col.data, c.cols[i].data) {
			return fmt.Errorf("column %s (%#x) %s", columnName(col.spec), col.spec, noncanonical)
		}
	}
	return fmt.Errorf("the change %s", noncanonical)
}

// namedFaults names the differences Automerge would rebuild away that a
// byte comparison alone would report less clearly.
func (c *change) namedFaults() error {
	for i := 1; i < len(c.deps); i++ {
		if cmpHash(c.deps[i-1], c.deps[i]) >= 0 {
			return errors.New("dependencies are not sorted and distinct, as Automerge writes them")
		}
	}
	want := c.canonicalActors()
	if !slices.EqualFunc(want, c.others, bytes.Equal) {
		return errors.New("other actors are not the sorted set of actors the operations name, as Automerge writes them")
	}
	for i, op := range c.ops {
		for j := 1; j < len(op.pred); j++ {
			if c.cmpOpID(op.pred[j-1], op.pred[j]) >= 0 {
				return fmt.Errorf("operation %d: predecessors are not sorted and distinct", i)
			}
		}
		if r := op.rebuilt(); !r.val.equal(op.val) || r.expand != op.expand || r.hasMark != op.hasMark {
			return fmt.Errorf("operation %d: action %d carries a value, mark name or expand flag that Automerge would not keep", i, op.action)
		}
	}
	return nil
}

// cmpOpID orders operation IDs as Automerge does (Lamport order): by
// counter, then by actor bytes.
func (c *change) cmpOpID(a, b chOpID) int {
	if a.ctr != b.ctr {
		if a.ctr < b.ctr {
			return -1
		}
		return 1
	}
	return bytes.Compare(c.actorOf(a.actor), c.actorOf(b.actor))
}

// sectionAt names the part of the payload that holds byte n.
func (c *change) sectionAt(n int) string {
	for _, s := range c.sections[:c.nsect] {
		if n < s.end {
			return s.name
		}
	}
	if len(c.extra) > 0 {
		return "the bytes after the columns"
	}
	return "the change"
}
