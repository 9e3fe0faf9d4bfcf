package crdt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// Automerge's Rust core, as automerge-go bundles it, trusts the columns of
// the chunks it loads in places: an actor index past a change's or a
// document's actor table is an index out of bounds, and in a document chunk
// an operation with an unknown action, or an increment by a value that is
// not an integer, reaches an unreachable!(). Each panics, and a Rust panic
// cannot unwind into Go: it aborts the whole process, whoever sent the
// bytes (a checksum is no defence, anyone can compute one). The checks here
// refuse those before automerge sees them. They are not a full validator:
// that a change will survive saving and loading is checked by
// canonical.go and opindex.go.
//
// A change chunk's payload is its dependencies, actor, sequence number,
// start op, time, message, other actors, column metadata and column data.
// A document chunk's is its actor table, heads, the metadata of its change
// columns and of its operation columns, then the columns' data.

// Column specs are column id << 4 | deflate bit | type.
const (
	colAction    = 4<<4 | 2 // uLEB128, run-length encoded
	colValueMeta = 5<<4 | 6 // value metadata: length << 4 | type code
	colDeflate   = 1 << 3   // set in a column spec when its data is DEFLATEd
	colTypeMask  = 7        // a column spec's low bits: its type
	colTypeActor = 1        // uLEB128 indexes into the actor table, run-length encoded
	maxAction    = 7        // make map, set, make list, delete, make text, increment, make table, mark
	actionInc    = 5
	valueUint    = 3
	valueInt     = 4
)

// checkDocument checks a document chunk's payload and returns the heads it
// declares and how many operations it holds.
func checkDocument(p []byte, budget *InflateBudget) ([]Hash, uint64, error) {
	actors, p, err := actorTable(p)
	if err != nil {
		return nil, 0, err
	}
	heads, p, err := hashList(p, "heads")
	if err != nil {
		return nil, 0, err
	}
	changeCols, p, err := columnMeta(p)
	if err != nil {
		return nil, 0, fmt.Errorf("change columns: %w", err)
	}
	opCols, p, err := columnMeta(p)
	if err != nil {
		return nil, 0, fmt.Errorf("operation columns: %w", err)
	}
	if p, _, err = checkColumns(changeCols, p, actors, false, budget); err != nil {
		return nil, 0, fmt.Errorf("change columns: %w", err)
	}
	_, ops, err := checkColumns(opCols, p, actors, true, budget)
	if err != nil {
		return nil, 0, fmt.Errorf("operation columns: %w", err)
	}
	return heads, ops, nil
}

// checkChangeOps checks the rest of a change chunk's payload, after its
// dependencies, actor and sequence number: start op, time, message, the
// other actors its operations name, and its operation columns. Operations
// name actors by index: 0 is the change's author, then the other actors.
func checkChangeOps(p []byte, budget *InflateBudget) error {
	_, ln := binary.Uvarint(p)
	if ln <= 0 {
		return errors.New("bad start op")
	}
	p = p[ln:]
	if _, ln = readSLEB(p); ln <= 0 {
		return errors.New("bad time")
	}
	p = p[ln:]
	msg, ln := binary.Uvarint(p)
	if ln <= 0 || msg > uint64(len(p)-ln) {
		return errors.New("bad message")
	}
	p = p[ln+int(msg):]
	others, p, err := actorTable(p)
	if err != nil {
		return err
	}
	var buf [len(columnSpecs) + 2]column
	cols, p, err := appendColumnMeta(buf[:0], p)
	if err != nil {
		return err
	}
	_, _, err = checkColumns(cols, p, 1+others, true, budget)
	return err
}

// actorTable skips a count of length-prefixed actor IDs and returns the
// count.
func actorTable(p []byte) (uint64, []byte, error) {
	n, ln := binary.Uvarint(p)
	if ln <= 0 || n > uint64(len(p)) {
		return 0, nil, errors.New("bad actor count")
	}
	p = p[ln:]
	for range n {
		l, ln := binary.Uvarint(p)
		if ln <= 0 || l > uint64(len(p)-ln) {
			return 0, nil, errors.New("bad actor")
		}
		p = p[ln+int(l):]
	}
	return n, p, nil
}

// checkColumns walks the data of cols at the start of p and returns what
// follows it. Every actor column must index inside a table of actors; with
// ops, the action column must hold known actions (see checkActions).
// With ops, it also returns how many operations the columns hold.
// Compressed columns are inflated within budget: with a budget, every
// one, since loading the chunk would inflate them all.
func checkColumns(cols []column, p []byte, actors uint64, ops bool, budget *InflateBudget) ([]byte, uint64, error) {
	var action, meta []byte
	for _, c := range cols {
		if c.size > uint64(len(p)) {
			return nil, 0, errors.New("columns overrun the chunk")
		}
		data := p[:c.size]
		p = p[c.size:]
		typ := c.spec &^ colDeflate
		if c.spec&colTypeMask != colTypeActor && !(ops && (typ == colAction || typ == colValueMeta)) {
			if c.spec&colDeflate != 0 && budget != nil {
				if _, err := budget.inflate(data); err != nil {
					return nil, 0, fmt.Errorf("column %#x: %w", c.spec, err)
				}
			}
			continue
		}
		if c.spec&colDeflate != 0 {
			var err error
			if data, err = budget.inflate(data); err != nil {
				return nil, 0, fmt.Errorf("column %#x: %w", c.spec, err)
			}
		}
		switch {
		case c.spec&colTypeMask == colTypeActor:
			if err := checkActorIndexes(data, actors); err != nil {
				return nil, 0, fmt.Errorf("column %#x: %w", c.spec, err)
			}
		case typ == colAction:
			action = data
		default:
			meta = data
		}
	}
	var n uint64
	if ops {
		var err error
		if n, err = checkActions(action, meta); err != nil {
			return nil, 0, err
		}
	}
	return p, n, nil
}

type column struct {
	spec, size uint64
}

// columnMeta reads a column count followed by (spec, size) pairs.
func columnMeta(p []byte) ([]column, []byte, error) {
	return appendColumnMeta(nil, p)
}

// appendColumnMeta is columnMeta appending to cols (a change's handful of
// columns fit a caller's array, and framing reads every change's).
func appendColumnMeta(cols []column, p []byte) ([]column, []byte, error) {
	n, ln := binary.Uvarint(p)
	if ln <= 0 || n > uint64(len(p)) {
		return nil, nil, errors.New("bad column count")
	}
	p = p[ln:]
	cols = slices.Grow(cols[:0], int(n))[:n]
	for i := range cols {
		spec, ln := binary.Uvarint(p)
		if ln <= 0 {
			return nil, nil, errors.New("bad column spec")
		}
		p = p[ln:]
		size, ln := binary.Uvarint(p)
		if ln <= 0 {
			return nil, nil, errors.New("bad column size")
		}
		p = p[ln:]
		cols[i] = column{spec: spec, size: size}
	}
	return cols, p, nil
}

// checkActions walks the action column beside the value-metadata column:
// every action must be known, and an increment's value an integer. It
// returns the number of operations.
func checkActions(action, meta []byte) (n uint64, err error) {
	acts, vals := rleRuns{b: action}, rleRuns{b: meta}
	for {
		a, ok := acts.next()
		if acts.err != nil {
			return 0, fmt.Errorf("action column: %w", acts.err)
		}
		if !ok {
			return n, nil
		}
		if a.null || a.val > maxAction {
			return 0, fmt.Errorf("missing or unknown operation action %d", a.val)
		}
		n += a.n
		for left := a.n; left > 0; {
			v, ok := vals.take(left)
			if vals.err != nil {
				return 0, fmt.Errorf("value column: %w", vals.err)
			}
			if !ok {
				v = rleRun{n: left, null: true} // a short column reads as nulls
			}
			if a.val == actionInc && (v.null || v.val&0xf != valueUint && v.val&0xf != valueInt) {
				return 0, errors.New("increment by a value that is not an integer")
			}
			left -= v.n
		}
	}
}

// checkActorIndexes checks that a run-length encoded column of actor
// indexes stays inside a table of n actors.
func checkActorIndexes(col []byte, n uint64) error {
	r := rleRuns{b: col}
	for {
		run, ok := r.next()
		if r.err != nil {
			return r.err
		}
		if !ok {
			return nil
		}
		if !run.null && run.val >= n {
			return fmt.Errorf("actor index %d in a table of %d", run.val, n)
		}
	}
}

// rleRun is n copies of one value (or of null).
type rleRun struct {
	n    uint64
	val  uint64
	null bool
}

// rleRuns reads Automerge's run-length encoding of uLEB128 values: a signed
// LEB128 count c, then one value repeated c times (c > 0), -c literal
// values (c < 0), or a uLEB128 count of nulls (c == 0).
type rleRuns struct {
	b       []byte
	lits    uint64 // literal values left in the current literal run
	pending rleRun // the part of a run that take has not consumed
	err     error
}

// next returns the next run (a literal value is a run of one).
func (r *rleRuns) next() (rleRun, bool) {
	if r.pending.n > 0 {
		run := r.pending
		r.pending.n = 0
		return run, true
	}
	if r.lits > 0 {
		r.lits--
		v, ok := r.uleb()
		return rleRun{n: 1, val: v}, ok
	}
	if len(r.b) == 0 || r.err != nil {
		return rleRun{}, false
	}
	c, ok := r.sleb()
	if !ok {
		return rleRun{}, false
	}
	switch {
	case c > 0:
		v, ok := r.uleb()
		return rleRun{n: uint64(c), val: v}, ok
	case c < 0:
		r.lits = uint64(-c)
		return r.next()
	}
	n, ok := r.uleb()
	if ok && n == 0 {
		r.err = errors.New("empty null run")
		return rleRun{}, false
	}
	return rleRun{n: n, null: true}, ok
}

// take returns the next run cut to at most n values, keeping the rest.
func (r *rleRuns) take(n uint64) (rleRun, bool) {
	run, ok := r.next()
	if !ok {
		return run, false
	}
	if run.n > n {
		r.pending = run
		r.pending.n -= n
		run.n = n
	}
	return run, true
}

func (r *rleRuns) uleb() (uint64, bool) {
	v, ln := binary.Uvarint(r.b)
	if ln <= 0 {
		r.err = errors.New("bad uLEB128")
		return 0, false
	}
	r.b = r.b[ln:]
	return v, true
}

func (r *rleRuns) sleb() (int64, bool) {
	v, ln := readSLEB(r.b)
	if ln <= 0 {
		r.err = errors.New("bad LEB128")
		return 0, false
	}
	r.b = r.b[ln:]
	return v, true
}

// readSLEB reads a signed LEB128 (not Go's zig-zag varint) and returns it
// with the number of bytes read, or 0 if p does not start with one that
// fits an int64 and can be negated.
func readSLEB(p []byte) (int64, int) {
	var v int64
	var shift uint
	for i, c := range p {
		if shift >= 63 && c&0x7f > 1 {
			return 0, 0
		}
		v |= int64(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			if shift < 64 && c&0x40 != 0 {
				v |= -1 << shift
			}
			if v == -1<<63 {
				return 0, 0
			}
			return v, i + 1
		}
	}
	return 0, 0
}
