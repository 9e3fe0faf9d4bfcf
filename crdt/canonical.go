package crdt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"
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

// Column specs of a change's operation columns (id << 4 | type), in the
// order Automerge writes them.
const (
	specObjActor   = 0x01
	specObjCounter = 0x02
	specKeyActor   = 0x11
	specKeyCounter = 0x13
	specKeyString  = 0x15
	specInsert     = 0x34
	specAction     = 0x42
	specValueMeta  = 0x56
	specValue      = 0x57
	specPredGroup  = 0x70
	specPredActor  = 0x71
	specPredCount  = 0x73
	specExpand     = 0x94
	specMarkName   = 0xa5
)

// columnSpecs lists the columns a change can have, in order; a column's
// index here is its slot in a colSet.
var columnSpecs = [...]struct {
	spec uint64
	name string
}{
	{specObjActor, "object actor"}, {specObjCounter, "object counter"},
	{specKeyActor, "key actor"}, {specKeyCounter, "key counter"}, {specKeyString, "key string"},
	{specInsert, "insert"}, {specAction, "action"},
	{specValueMeta, "value metadata"}, {specValue, "value"},
	{specPredGroup, "predecessor count"}, {specPredActor, "predecessor actor"}, {specPredCount, "predecessor counter"},
	{specExpand, "mark expand"}, {specMarkName, "mark name"},
}

// colSet holds a change's column data by slot (see columnSpecs).
type colSet [len(columnSpecs)][]byte

// slot returns a spec's slot, or -1 for a column a change cannot have.
func slot(spec uint64) int {
	for i, c := range columnSpecs {
		if c.spec == spec {
			return i
		}
	}
	return -1
}

func (cs *colSet) get(spec uint64) []byte { return cs[slot(spec)] }

func columnName(spec uint64) string {
	if i := slot(spec); i >= 0 {
		return columnSpecs[i].name
	}
	return "unknown"
}

// Operation actions.
const (
	actMakeMap   = 0
	actSet       = 1
	actMakeList  = 2
	actDelete    = 3
	actMakeText  = 4
	actIncrement = 5
	actMakeTable = 6
	actMark      = 7
)

// Value type codes (the low four bits of a value's metadata).
const (
	valNull      = 0
	valFalse     = 1
	valTrue      = 2
	valUint      = 3
	valInt       = 4
	valFloat     = 5
	valString    = 6
	valBytes     = 7
	valCounter   = 8
	valTimestamp = 9
)

// chOpID names an operation inside a change: a counter and an index into
// the change's actors (0 is the change's author, then its other actors).
type chOpID struct {
	ctr   uint64
	actor uint64
}

// keyKind is what an operation's key is.
type keyKind uint8

const (
	keyProp keyKind = iota // a map key
	keyHead                // the start of a sequence
	keyElem                // a sequence element, named by the operation that inserted it
)

// scalar is a value: its type code and its decoded content.
type scalar struct {
	code uint8
	u    uint64 // uint
	i    int64  // int, counter, timestamp
	raw  []byte // float (8 bytes), string, bytes, unknown types
}

func (v scalar) equal(o scalar) bool {
	return v.code == o.code && v.u == o.u && v.i == o.i && bytes.Equal(v.raw, o.raw)
}

// chOp is one decoded operation of a change.
type chOp struct {
	obj      chOpID // counter 0: the root map
	kind     keyKind
	prop     string
	elem     chOpID
	insert   bool
	action   uint64
	val      scalar
	pred     []chOpID
	expand   bool
	hasMark  bool
	markName string
}

// change is a decoded change chunk payload.
type change struct {
	deps    []Hash
	actor   []byte
	seq     uint64
	startOp uint64
	time    int64
	message string
	others  [][]byte
	ops     []chOp
	extra   []byte
	cols    []encodedColumn // as received, in order
	header  []byte          // the bytes before the column metadata

	// Where each header field ends in the payload, for error messages.
	sections [7]section
	nsect    int
	predBuf  []chOpID // backs the operations' predecessors
}

type section struct {
	end  int // offset just past the part
	name string
}

// actorOf returns the actor bytes an operation ID's index names.
func (c *change) actorOf(i uint64) []byte {
	if i == 0 {
		return c.actor
	}
	return c.others[i-1]
}

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
	p := &payloadReader{reader: reader{b: payload}, start: len(payload), c: c}
	nDeps := p.uleb()
	if nDeps > uint64(len(p.b)/HashSize) {
		return nil, errors.New("bad dependency count")
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
		return nil, errors.New("message is not UTF-8")
	}
	c.message = string(msg)
	p.mark("message")
	nOthers := p.uleb()
	if nOthers > uint64(len(p.b)) {
		return nil, errors.New("bad actor count")
	}
	for range nOthers {
		c.others = append(c.others, p.bytes(p.uleb()))
	}
	p.mark("other actors")
	if p.err != nil {
		return nil, fmt.Errorf("truncated header: %w", p.err)
	}
	if c.startOp == 0 {
		return nil, errors.New("start op is zero")
	}
	c.header = payload[:len(payload)-len(p.b)]
	cols, err := readColumns(p)
	if err != nil {
		return nil, err
	}
	c.extra = p.b
	if err := c.decodeOps(cols); err != nil {
		return nil, err
	}
	return c, nil
}

// readColumns reads the column metadata and slices out each column's data.
func readColumns(p *payloadReader) (*colSet, error) {
	n := p.uleb()
	if p.err != nil || n > uint64(len(p.b)) {
		return nil, errors.New("bad column count")
	}
	type meta struct{ spec, size uint64 }
	var buf [len(columnSpecs) + 2]meta
	metas := buf[:0]
	for range n {
		metas = append(metas, meta{p.uleb(), p.uleb()})
	}
	if p.err != nil {
		return nil, errors.New("bad column metadata")
	}
	cols := &colSet{}
	var seen [len(columnSpecs)]bool
	p.c.cols = make([]encodedColumn, 0, len(metas))
	for _, m := range metas {
		i := slot(m.spec)
		switch {
		case m.spec&colDeflate != 0:
			return nil, fmt.Errorf("column %#x is DEFLATEd, which Automerge never does in a change", m.spec)
		case i < 0:
			return nil, fmt.Errorf("unknown column %#x: the bundled Automerge would drop it, and the change would not rebuild", m.spec)
		case seen[i]:
			return nil, fmt.Errorf("column %#x appears twice", m.spec)
		}
		seen[i] = true
		data := p.bytes(m.size)
		if p.err != nil {
			return nil, errors.New("columns overrun the change")
		}
		cols[i] = data
		p.c.cols = append(p.c.cols, encodedColumn{m.spec, data})
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
	others := c.canonicalActors()
	index := func(id chOpID) uint64 {
		a := c.actorOf(id.actor)
		if bytes.Equal(a, c.actor) {
			return 0
		}
		i, _ := slices.BinarySearchFunc(others, a, bytes.Compare)
		return uint64(i + 1)
	}
	ops := make([]chOp, len(c.ops))
	for i, op := range c.ops {
		op = op.rebuilt()
		op.obj.actor = index(op.obj)
		op.elem.actor = index(op.elem)
		op.pred = slices.Clone(op.pred)
		for j := range op.pred {
			op.pred[j].actor = index(op.pred[j])
		}
		ops[i] = op
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
	var b []byte
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
	var (
		objA   = newRLEEncoder(writeUint)
		objC   = newRLEEncoder(writeUint)
		keyA   = newRLEEncoder(writeUint)
		keyC   = newDeltaEncoder()
		keyS   = newRLEEncoder(writeStr)
		insert = newBoolEncoder(false)
		action = newRLEEncoder(writeUint)
		meta   = newRLEEncoder(writeUint)
		raw    []byte
		predN  = newRLEEncoder(writeUint)
		predA  = newRLEEncoder(writeUint)
		predC  = newDeltaEncoder()
		expand = newBoolEncoder(true)
		marks  = newRLEEncoder(writeStr)
	)
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
	objActor := objA.finish()
	var objCtr []byte
	if len(objActor) > 0 {
		// Rust writes the counters only if some object is not the root.
		objCtr = objC.finish()
	}
	all := []encodedColumn{
		{specObjActor, objActor},
		{specObjCounter, objCtr},
		{specKeyActor, keyA.finish()},
		{specKeyCounter, keyC.finish()},
		{specKeyString, keyS.finish()},
		{specInsert, insert.finish()},
		{specAction, action.finish()},
		{specValueMeta, meta.finish()},
		{specValue, raw},
		{specPredGroup, predN.finish()},
	}
	if pa := predA.finish(); len(pa) > 0 {
		all = append(all, encodedColumn{specPredActor, pa}, encodedColumn{specPredCount, predC.finish()})
	}
	all = append(all, encodedColumn{specExpand, expand.finish()}, encodedColumn{specMarkName, marks.finish()})
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

// checkCanonical decodes a change payload and checks that Automerge would
// rebuild it byte for byte. The error says what differs.
func checkCanonical(payload []byte) (*change, error) {
	c, err := decodeChange(payload)
	if err != nil {
		return nil, err
	}
	if err := c.namedFaults(); err != nil {
		return nil, err
	}
	deps, others, ops := c.canonicalParts()
	cols := encodeOpColumns(ops)
	if bytes.Equal(c.assemble(deps, others, cols), payload) {
		return c, nil
	}
	return nil, c.difference(c.assembleHeader(deps, others), cols)
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
		if !slices.IsSortedFunc(op.pred, c.cmpOpID) || len(slices.CompactFunc(slices.Clone(op.pred), func(a, b chOpID) bool { return c.cmpOpID(a, b) == 0 })) != len(op.pred) {
			return fmt.Errorf("operation %d: predecessors are not sorted and distinct", i)
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
