package crdt

import (
	"bytes"
	"slices"
	"sync"
)

// rebuilt returns the operation as Automerge keeps it (types::Op) and
// writes it back (storage/convert/op_as_changeop.rs): only a set keeps
// its value; an increment keeps its amount as an int; a mark keeps its
// name and expand flag, and a mark's end keeps no value.
func (op chOp) rebuilt() chOp {
	r := op
	r.expand, r.hasMark, r.markName = false, false, ""
	switch op.action {
	case actSet:
	case actIncrement:
		if op.val.code == valUint {
			r.val = scalar{code: valInt, i: int64(op.val.u)}
		}
	case actMark:
		r.expand = op.expand
		if op.hasMark {
			r.hasMark, r.markName = true, op.markName
		} else {
			r.val = scalar{}
		}
	default:
		r.val = scalar{}
	}
	return r
}

// canonicalActors returns the other-actors table Automerge would write for
// these operations: every actor an object, key or predecessor names, other
// than the author, sorted by bytes.
func (c *change) canonicalActors() [][]byte {
	seen := map[uint64]bool{}
	var out [][]byte
	add := func(id chOpID) {
		a := c.actorOf(id.actor)
		if id.actor == 0 || seen[id.actor] || bytes.Equal(a, c.actor) {
			return
		}
		seen[id.actor] = true
		if !slices.ContainsFunc(out, func(b []byte) bool { return bytes.Equal(a, b) }) {
			out = append(out, a)
		}
	}
	for _, op := range c.ops {
		if op.obj.ctr != 0 {
			add(op.obj)
		}
		if op.kind == keyElem {
			add(op.elem)
		}
		for _, p := range op.pred {
			add(p)
		}
	}
	slices.SortFunc(out, bytes.Compare)
	return out
}

// encodeCanonical returns the payload Automerge's ChangeBuilder would
// write for the change as the document keeps it.
func (c *change) encodeCanonical() []byte {
	deps, others, ops := c.canonicalParts()
	return c.assemble(deps, others, encodeOpColumns(ops))
}

// canonicalParts returns what the rebuilt change holds: its dependencies
// (sorted, as ChangeBuilder sorts them), its other actors, and its
// operations as the document keeps them, with actor indexes into that
// table.
func (c *change) canonicalParts() ([]Hash, [][]byte, []chOp) {
	return c.canonicalPartsIn(nil)
}

// canonicalPartsIn is canonicalParts with the operations written into e's
// buffers (nil: new ones).
func (c *change) canonicalPartsIn(e *opEncoder) ([]Hash, [][]byte, []chOp) {
	others := c.canonicalActors()
	index := func(id chOpID) uint64 {
		a := c.actorOf(id.actor)
		if bytes.Equal(a, c.actor) {
			return 0
		}
		i, _ := slices.BinarySearchFunc(others, a, bytes.Compare)
		return uint64(i + 1)
	}
	var ops []chOp
	var preds []chOpID
	if e != nil {
		ops, preds = e.ops[:0], e.preds[:0]
	}
	np := 0
	for _, op := range c.ops {
		np += len(op.pred)
	}
	ops, preds = slices.Grow(ops, len(c.ops)), slices.Grow(preds, np)
	for _, op := range c.ops {
		op = op.rebuilt()
		op.obj.actor = index(op.obj)
		op.elem.actor = index(op.elem)
		from := len(preds)
		for _, p := range op.pred {
			p.actor = index(p)
			preds = append(preds, p)
		}
		op.pred = preds[from:len(preds):len(preds)]
		ops = append(ops, op)
	}
	if e != nil {
		e.ops, e.preds = ops, preds
	}
	deps := slices.Clone(c.deps)
	slices.SortFunc(deps, cmpHash)
	deps = slices.Compact(deps)
	return deps, others, ops
}

// assemble writes a change payload from its parts.
func (c *change) assemble(deps []Hash, others [][]byte, cols []encodedColumn) []byte {
	b := c.assembleHeader(deps, others)
	b = appendULEB(b, uint64(len(cols)))
	for _, col := range cols {
		b = appendULEB(b, col.spec)
		b = appendULEB(b, uint64(len(col.data)))
	}
	for _, col := range cols {
		b = append(b, col.data...)
	}
	return append(b, c.extra...)
}

// assembleHeader writes the fields before the column metadata.
func (c *change) assembleHeader(deps []Hash, others [][]byte) []byte {
	return c.appendHeader(nil, deps, others)
}

// appendHeader appends the fields before the column metadata to b.
func (c *change) appendHeader(b []byte, deps []Hash, others [][]byte) []byte {
	b = appendULEB(b, uint64(len(deps)))
	for _, d := range deps {
		b = append(b, d[:]...)
	}
	b = appendBytes(b, c.actor)
	b = appendULEB(b, c.seq)
	b = appendULEB(b, c.startOp)
	b = appendSLEB(b, c.time)
	b = appendBytes(b, []byte(c.message))
	b = appendULEB(b, uint64(len(others)))
	for _, a := range others {
		b = appendBytes(b, a)
	}
	return b
}

func appendBytes(b, s []byte) []byte {
	b = appendULEB(b, uint64(len(s)))
	return append(b, s...)
}

type encodedColumn struct {
	spec uint64
	data []byte
}

// encodeOpColumns is ChangeOpsColumns::encode followed by raw_columns():
// columns in spec order, empty ones left out.
func encodeOpColumns(ops []chOp) []encodedColumn {
	return newOpEncoder().encode(ops)
}

// opEncoder encodes a change's operation columns. One is reused, with its
// buffers, across the changes an Import checks (see checkCanonical): the
// encoders' buffers were most of what checking a small change allocated.
type opEncoder struct {
	objA, objC, keyA, action, meta, predN, predA rleEncoder[uint64]
	keyS, marks                                  rleEncoder[string]
	keyC, predC                                  deltaEncoder
	insert, expand                               boolEncoder
	raw                                          []byte
	cols                                         []encodedColumn
	// For checkCanonical: the rebuilt operations and their predecessors,
	// and the header and column metadata written for the comparison.
	ops   []chOp
	preds []chOpID
	buf   []byte
}

func newOpEncoder() *opEncoder {
	e := &opEncoder{insert: boolEncoder{allFalse: true}, expand: boolEncoder{maybe: true, allFalse: true}}
	for _, u := range []*rleEncoder[uint64]{&e.objA, &e.objC, &e.keyA, &e.action, &e.meta, &e.predN, &e.predA} {
		u.write = writeUint
	}
	e.keyS.write, e.marks.write = writeStr, writeStr
	e.keyC.rle.write, e.predC.rle.write = writeInt, writeInt
	return e
}

var opEncoders = sync.Pool{New: func() any { return newOpEncoder() }}

// maxPooledBytes bounds the buffers an opEncoder keeps when it goes back
// to the pool, so one large change does not pin its buffers.
const maxPooledBytes = 64 << 10

// release returns e to the pool; what encode returned is then invalid.
func (e *opEncoder) release() {
	n := cap(e.raw) + cap(e.buf) + cap(e.ops)*64 + cap(e.preds)*16
	for _, u := range []*rleEncoder[uint64]{&e.objA, &e.objC, &e.keyA, &e.action, &e.meta, &e.predN, &e.predA} {
		n += cap(u.out) + 8*cap(u.lits)
	}
	for _, d := range []*deltaEncoder{&e.keyC, &e.predC} {
		n += cap(d.rle.out) + 8*cap(d.rle.lits)
	}
	n += cap(e.keyS.out) + cap(e.marks.out) + 16*(cap(e.keyS.lits)+cap(e.marks.lits)) + cap(e.insert.out) + cap(e.expand.out)
	if n <= maxPooledBytes {
		// Let go of the strings of the last change.
		clear(e.ops[:cap(e.ops)])
		clear(e.keyS.lits[:cap(e.keyS.lits)])
		clear(e.marks.lits[:cap(e.marks.lits)])
		e.keyS.reset()
		e.marks.reset()
		opEncoders.Put(e)
	}
}

// encode returns ops's columns, in buffers of e's that stay valid until it
// encodes again or is released.
func (e *opEncoder) encode(ops []chOp) []encodedColumn {
	var (
		objA, objC, keyA, action, meta = &e.objA, &e.objC, &e.keyA, &e.action, &e.meta
		predN, predA                   = &e.predN, &e.predA
		keyS, marks                    = &e.keyS, &e.marks
		keyC, predC                    = &e.keyC, &e.predC
		insert, expand                 = &e.insert, &e.expand
		raw                            = e.raw[:0]
	)
	for _, u := range []*rleEncoder[uint64]{objA, objC, keyA, action, meta, predN, predA} {
		u.reset()
	}
	keyS.reset()
	marks.reset()
	keyC.reset()
	predC.reset()
	insert.reset()
	expand.reset()
	for _, op := range ops {
		if op.obj.ctr == 0 {
			objA.appendNull()
			objC.appendNull()
		} else {
			objA.appendValue(op.obj.actor)
			objC.appendValue(op.obj.ctr)
		}
		switch op.kind {
		case keyProp:
			keyS.appendValue(op.prop)
			keyA.appendNull()
			keyC.appendNull()
		case keyHead:
			keyS.appendNull()
			keyA.appendNull()
			keyC.appendValue(0)
		case keyElem:
			keyS.appendNull()
			keyA.appendValue(op.elem.actor)
			keyC.appendValue(int64(op.elem.ctr))
		}
		insert.append(op.insert)
		action.appendValue(op.action)
		var m uint64
		m, raw = appendValue(raw, op.val)
		meta.appendValue(m)
		predN.appendValue(uint64(len(op.pred)))
		for _, p := range op.pred {
			predA.appendValue(p.actor)
			predC.appendValue(int64(p.ctr))
		}
		expand.append(op.expand)
		if op.hasMark {
			marks.appendValue(op.markName)
		} else {
			marks.appendNull()
		}
	}
	e.raw = raw
	objActor := objA.finish()
	var objCtr []byte
	if len(objActor) > 0 {
		// Rust writes the counters only if some object is not the root.
		objCtr = objC.finish()
	}
	all := append(e.cols[:0],
		encodedColumn{specObjActor, objActor},
		encodedColumn{specObjCounter, objCtr},
		encodedColumn{specKeyActor, keyA.finish()},
		encodedColumn{specKeyCounter, keyC.finish()},
		encodedColumn{specKeyString, keyS.finish()},
		encodedColumn{specInsert, insert.finish()},
		encodedColumn{specAction, action.finish()},
		encodedColumn{specValueMeta, meta.finish()},
		encodedColumn{specValue, raw},
		encodedColumn{specPredGroup, predN.finish()},
	)
	if pa := predA.finish(); len(pa) > 0 {
		all = append(all, encodedColumn{specPredActor, pa}, encodedColumn{specPredCount, predC.finish()})
	}
	all = append(all, encodedColumn{specExpand, expand.finish()}, encodedColumn{specMarkName, marks.finish()})
	e.cols = all
	return slices.DeleteFunc(all, func(c encodedColumn) bool { return len(c.data) == 0 })
}

// appendValue appends a value's raw bytes and returns its metadata.
func appendValue(raw []byte, v scalar) (uint64, []byte) {
	start := len(raw)
	switch v.code {
	case valNull, valFalse, valTrue:
	case valUint:
		raw = appendULEB(raw, v.u)
	case valInt, valCounter, valTimestamp:
		raw = appendSLEB(raw, v.i)
	default:
		raw = append(raw, v.raw...)
	}
	return uint64(len(raw)-start)<<4 | uint64(v.code), raw
}
