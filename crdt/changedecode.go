package crdt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"
)

// payloadReader reads the fields of a change payload, noting where each
// ends.
type payloadReader struct {
	reader
	start int
	c     *change
}

func (p *payloadReader) mark(name string) {
	p.c.sections[p.c.nsect] = section{end: p.start - len(p.b), name: name}
	p.c.nsect++
}

// decodeChange decodes a change chunk's payload as the bundled Rust core
// reads it (storage/change.rs and change_op_columns.rs). It refuses what
// Rust would refuse, and some things Rust reads but would never rebuild
// (unknown or DEFLATEd columns, runs of zero nulls).
func decodeChange(payload []byte) (*change, error) {
	c := &change{}
	if err := c.decode(payload); err != nil {
		return nil, err
	}
	return c, nil
}

// decode is decodeChange into c, whose slices it reuses (see
// changePool): what c held before is overwritten.
func (c *change) decode(payload []byte) error {
	cols, err := c.decodeLayout(payload)
	if err != nil {
		return err
	}
	return c.decodeOps(&cols)
}

// decodeLayout decodes a change's header into c, reusing its slices, and
// finds its columns, leaving its operations undecoded.
func (c *change) decodeLayout(payload []byte) (colSet, error) {
	*c = change{deps: c.deps[:0], others: c.others[:0], ops: c.ops[:0], cols: c.cols[:0], predBuf: c.predBuf[:0]}
	p := &payloadReader{reader: reader{b: payload}, start: len(payload), c: c}
	nDeps := p.uleb()
	if nDeps > uint64(len(p.b)/HashSize) {
		return colSet{}, errors.New("bad dependency count")
	}
	for range nDeps {
		c.deps = append(c.deps, Hash(p.bytes(HashSize)))
	}
	p.mark("dependencies")
	c.actor = p.bytes(p.uleb())
	p.mark("actor")
	c.seq = p.uleb()
	p.mark("sequence number")
	c.startOp = p.uleb()
	p.mark("start op")
	c.time = p.sleb64()
	p.mark("time")
	msg := p.bytes(p.uleb())
	if p.err == nil && !utf8.Valid(msg) {
		return colSet{}, errors.New("message is not UTF-8")
	}
	c.message = string(msg)
	p.mark("message")
	nOthers := p.uleb()
	if nOthers > uint64(len(p.b)) {
		return colSet{}, errors.New("bad actor count")
	}
	for range nOthers {
		c.others = append(c.others, p.bytes(p.uleb()))
	}
	p.mark("other actors")
	if p.err != nil {
		return colSet{}, fmt.Errorf("truncated header: %w", p.err)
	}
	if c.startOp == 0 {
		return colSet{}, errors.New("start op is zero")
	}
	c.header = payload[:len(payload)-len(p.b)]
	cols, err := readColumns(p)
	if err != nil {
		return colSet{}, err
	}
	c.extra = p.b
	return cols, nil
}

// readColumns reads the column metadata and slices out each column's data.
func readColumns(p *payloadReader) (colSet, error) {
	var cols colSet
	n := p.uleb()
	if p.err != nil || n > uint64(len(p.b)) {
		return cols, errors.New("bad column count")
	}
	type meta struct{ spec, size uint64 }
	var buf [len(columnSpecs) + 2]meta
	metas := buf[:0]
	for range n {
		metas = append(metas, meta{p.uleb(), p.uleb()})
	}
	if p.err != nil {
		return cols, errors.New("bad column metadata")
	}
	var seen [len(columnSpecs)]bool
	p.c.cols = slices.Grow(p.c.cols[:0], len(metas))
	for _, m := range metas {
		i := slot(m.spec)
		switch {
		case m.spec&colDeflate != 0:
			return cols, fmt.Errorf("column %#x is DEFLATEd, which Automerge never does in a change", m.spec)
		case i < 0:
			return cols, fmt.Errorf("unknown column %#x: the bundled Automerge would drop it, and the change would not rebuild", m.spec)
		case seen[i]:
			return cols, fmt.Errorf("column %#x appears twice", m.spec)
		}
		seen[i] = true
		data := p.bytes(m.size)
		if p.err != nil {
			return cols, errors.New("columns overrun the change")
		}
		cols[i] = data
		p.c.cols = append(p.c.cols, encodedColumn{m.spec, data})
		if m.spec == specValue {
			p.c.valueBytes = len(data)
		}
	}
	return cols, nil
}

// decodeOps reads the operations, driven by the action column as Rust's
// ChangeOpsIter is.
func (c *change) decodeOps(cols *colSet) error {
	var (
		objA   = newRLE[uint64](cols.get(specObjActor))
		objC   = newRLE[uint64](cols.get(specObjCounter))
		keyA   = newRLE[uint64](cols.get(specKeyActor))
		keyC   = newDelta(cols.get(specKeyCounter))
		keyS   = newRLE[string](cols.get(specKeyString))
		insert = newBool(cols.get(specInsert))
		action = newRLE[uint64](cols.get(specAction))
		vals   = valueDecoder{meta: newRLE[uint64](cols.get(specValueMeta)), raw: reader{b: cols.get(specValue)}}
		predN  = newRLE[uint64](cols.get(specPredGroup))
		predA  = newRLE[uint64](cols.get(specPredActor))
		predC  = newDelta(cols.get(specPredCount))
		expand = newBool(cols.get(specExpand))
		marks  = newRLE[string](cols.get(specMarkName))
	)
	// Rust reads every object as the root unless both object columns hold
	// data.
	rootOnly := len(cols.get(specObjActor)) == 0 || len(cols.get(specObjCounter)) == 0
	nActors := uint64(1 + len(c.others))
	if n := opsHint(action); n > 0 {
		c.ops = slices.Grow(c.ops[:0], n)
	}
	for i := 0; ; i++ {
		act, null, ok := action.next()
		if err := action.err(); err != nil {
			return fmt.Errorf("action column: %w", err)
		}
		if !ok {
			return nil
		}
		if null {
			return fmt.Errorf("operation %d: null action", i)
		}
		var op chOp
		op.action = act
		var err error
		if !rootOnly {
			if op.obj, err = readObj(&objA, &objC); err != nil {
				return fmt.Errorf("operation %d: object: %w", i, err)
			}
		}
		if err = readKey(&op, &keyA, &keyC, &keyS); err != nil {
			return fmt.Errorf("operation %d: key: %w", i, err)
		}
		if op.insert, ok = insert.next(); !ok {
			return fmt.Errorf("operation %d: insert column ends early", i)
		}
		if op.val, err = vals.next(); err != nil {
			return fmt.Errorf("operation %d: value: %w", i, err)
		}
		if op.pred, err = c.readPreds(&predN, &predA, &predC); err != nil {
			return fmt.Errorf("operation %d: predecessors: %w", i, err)
		}
		// The last two columns may end early: missing means false and none.
		op.expand, _ = expand.next()
		name, null, ok := marks.next()
		if marks.err() != nil {
			return fmt.Errorf("operation %d: mark name: %w", i, marks.err())
		}
		op.hasMark, op.markName = ok && !null, name
		if err := checkActorRefs(op, nActors); err != nil {
			return fmt.Errorf("operation %d: %w", i, err)
		}
		if act > actMark {
			return fmt.Errorf("operation %d: unknown action %d", i, act)
		}
		if act == actIncrement && op.val.code != valInt && op.val.code != valUint {
			return fmt.Errorf("operation %d: increment by a value that is not an integer", i)
		}
		c.ops = append(c.ops, op)
	}
}

// opsHint counts the values of the action column, one per operation, to
// size the operations once: growing them by appends cost more than the
// rest of decoding a small change. A run can claim many values in a few
// bytes, so the count stops at a bound; the decoder appends past it.
func opsHint(action rleDecoder[uint64]) int {
	const bound = 256
	n := 0
	for n < bound {
		if _, _, ok := action.next(); !ok {
			break
		}
		n++
	}
	return n
}

// readObj mirrors Rust's ObjIdIter: two nulls (or a counter of 0) are the
// root.
func readObj(actors, ctrs *rleDecoder[uint64]) (chOpID, error) {
	a, aNull, aOK := actors.next()
	n, nNull, nOK := ctrs.next()
	if err := errors.Join(actors.err(), ctrs.err()); err != nil {
		return chOpID{}, err
	}
	aVal, nVal := aOK && !aNull, nOK && !nNull
	switch {
	case !aVal && !nVal:
		return chOpID{}, nil
	case aVal && nVal:
		return chOpID{ctr: n, actor: a}, nil
	case nVal && n == 0:
		return chOpID{}, nil
	}
	return chOpID{}, errors.New("null actor or counter")
}

// readKey mirrors Rust's KeyIter.
func readKey(op *chOp, actors *rleDecoder[uint64], ctrs *deltaDecoder, strs *rleDecoder[string]) error {
	a, aNull, aOK := actors.next()
	n, nNull, nOK := ctrs.next()
	s, sNull, sOK := strs.next()
	if err := errors.Join(actors.err(), ctrs.rle.err(), strs.err()); err != nil {
		return err
	}
	aVal, nVal, sVal := aOK && !aNull, nOK && !nNull, sOK && !sNull
	switch {
	case aVal && nVal && sVal:
		return errors.New("both a string and an element")
	case !aVal && !nVal && sVal:
		op.kind, op.prop = keyProp, s
	case !aVal && nVal && n == 0 && !sVal:
		op.kind = keyHead
	case aVal && nVal && !sVal:
		if n < 0 {
			return errors.New("negative counter")
		}
		op.kind, op.elem = keyElem, chOpID{ctr: uint64(n), actor: a}
	case !aVal && !nVal && !sVal:
		return errors.New("missing")
	default:
		return errors.New("null actor or counter")
	}
	return nil
}

// readPreds mirrors Rust's OpIdListIter. The predecessors share one buffer.
func (c *change) readPreds(nums *rleDecoder[uint64], actors *rleDecoder[uint64], ctrs *deltaDecoder) ([]chOpID, error) {
	n, null, ok := nums.next()
	if err := nums.err(); err != nil {
		return nil, err
	}
	if !ok || null {
		return nil, errors.New("missing count")
	}
	if n > maxRun {
		return nil, errColumn
	}
	start := len(c.predBuf)
	for range n {
		a, aNull, aOK := actors.next()
		ctr, cNull, cOK := ctrs.next()
		if err := errors.Join(actors.err(), ctrs.rle.err()); err != nil {
			return nil, err
		}
		if !aOK || aNull || !cOK || cNull {
			return nil, errors.New("null actor or counter")
		}
		if ctr < 0 {
			return nil, errors.New("negative counter")
		}
		c.predBuf = append(c.predBuf, chOpID{ctr: uint64(ctr), actor: a})
	}
	if start == len(c.predBuf) {
		return nil, nil
	}
	return c.predBuf[start:len(c.predBuf):len(c.predBuf)], nil
}

// checkActorRefs refuses actor indexes outside the change's actor table
// (Rust indexes past it and panics).
func checkActorRefs(op chOp, n uint64) error {
	bad := op.obj.actor >= n || op.kind == keyElem && op.elem.actor >= n
	for _, p := range op.pred {
		bad = bad || p.actor >= n
	}
	if bad {
		return fmt.Errorf("an actor index past the table of %d", n)
	}
	return nil
}

// valueDecoder mirrors Rust's ValueIter: a metadata column (length << 4 |
// type) beside a column of raw bytes.
type valueDecoder struct {
	meta rleDecoder[uint64]
	raw  reader
}

func (d *valueDecoder) next() (scalar, error) {
	m, null, ok := d.meta.next()
	if err := d.meta.err(); err != nil {
		return scalar{}, err
	}
	if !ok || null {
		return scalar{}, errors.New("missing value metadata")
	}
	v := scalar{code: uint8(m & 0xf)}
	switch v.code {
	case valNull, valFalse, valTrue:
		// Rust reads no bytes for these, whatever length the metadata says.
		return v, nil
	}
	b := d.raw.bytes(m >> 4)
	if d.raw.err != nil {
		return scalar{}, errors.New("value overruns its column")
	}
	switch v.code {
	case valUint:
		u, n := binary.Uvarint(b)
		if n <= 0 || n != len(b) {
			return scalar{}, errors.New("bad uint")
		}
		v.u = u
	case valInt, valCounter, valTimestamp:
		i, n := readSLEB64(b)
		if n <= 0 || n != len(b) {
			return scalar{}, errors.New("bad int")
		}
		v.i = i
	case valFloat:
		if len(b) != 8 {
			return scalar{}, errors.New("float of other than 8 bytes")
		}
		v.raw = b
	case valString:
		if !utf8.Valid(b) {
			return scalar{}, errors.New("string is not UTF-8")
		}
		v.raw = b
	default:
		v.raw = b
	}
	return v, nil
}
