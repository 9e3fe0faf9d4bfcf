package crdt

import (
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strings"
	"time"
)

// Reading a deferred document's fields without Automerge.
//
// A device that takes a record it has never held (a fresh pull) needs its
// read model, not its Automerge document: the document is built only if
// the app edits the record. A deferred document holds its history as
// change chunks that Import checked in Go, so its current values can be
// worked out from their operations, as Automerge would: an operation is
// visible unless a later one names it as a predecessor (an increment
// leaves a counter visible and adds to it); of a key's visible
// operations the greatest ID wins; a sequence's elements are ordered as a
// tree, each after the element it was inserted after, siblings in
// descending ID order.
//
// Anything outside what Put, Set and the rest of this package write (tables,
// marks, value types Automerge added later) is left to Automerge:
// materialize reports errNotMaterialized and the caller builds the
// document. TestMaterializeMatchesAutomerge compares the two over random
// histories of several actors.

// errNotMaterialized: the history holds something materialize leaves to
// Automerge.
var errNotMaterialized = errors.New("crdt: history not read in Go")

// mID is an operation's ID, with its actor's bytes as a string.
type mID struct {
	ctr   uint64
	actor string
}

// after orders IDs as Automerge's Lamport order does: by counter, then by
// actor bytes.
func (a mID) after(b mID) bool {
	if a.ctr != b.ctr {
		return a.ctr > b.ctr
	}
	return a.actor > b.actor
}

// mOp is an operation that can be a value: a set or a make.
type mOp struct {
	id     mID
	action uint64
	val    scalar
	succ   int   // successors other than increments
	inc    int64 // what increments added (counters)
}

func (o *mOp) visible() bool { return o.succ == 0 }

// mElem is a sequence element: the operation that inserted it, the ones
// that set it since, and the elements inserted after it.
type mElem struct {
	id       mID
	ops      []*mOp
	children []*mElem
}

// mObj is a map or a sequence (list or text).
type mObj struct {
	action uint64 // actMakeMap, actMakeList or actMakeText
	keys   map[string][]*mOp
	head   mElem // the start of a sequence; its children come first
	elems  map[mID]*mElem
}

// materializer replays a history's operations.
type materializer struct {
	objs map[mID]*mObj
	ops  map[mID]*mOp
}

// materialize returns the fields a history of change chunks (data, in an
// order they apply) gives, as [Doc.TypedFields] returns them, and whether
// the record is a tombstone. It fails with errNotMaterialized on what it
// leaves to Automerge, and with the decoder's error on a change that does
// not decode (which Import's checks refuse before).
func materialize(data []byte) (fields map[string]any, deleted bool, err error) {
	ci, err := frame(data)
	if err != nil {
		return nil, false, err
	}
	if ci.documents > 0 {
		return nil, false, errNotMaterialized
	}
	m := &materializer{objs: map[mID]*mObj{{}: {action: actMakeMap, keys: map[string][]*mOp{}}}, ops: map[mID]*mOp{}}
	seen := make(map[Hash]bool, len(ci.changes))
	for i, p := range ci.payloads {
		// A deferred document keeps each stream whole, so a change it
		// took twice is in its bytes twice; Automerge applies it once.
		h := ci.changes[i].Hash
		if seen[h] {
			continue
		}
		seen[h] = true
		c, err := decodeChange(p)
		if err != nil {
			return nil, false, err
		}
		if err := m.apply(c); err != nil {
			return nil, false, err
		}
	}
	root, err := m.value(m.objs[mID{}], 0)
	if err != nil {
		return nil, false, err
	}
	fields = root.(map[string]any)
	if v, ok := fields[TombstoneKey].(bool); ok && v {
		deleted = true
	}
	delete(fields, TombstoneKey)
	return fields, deleted, nil
}

// apply replays one change's operations: values are placed under their
// keys, and each operation's predecessors are hidden (or, for an
// increment of a counter, added to).
func (m *materializer) apply(c *change) error {
	id := func(r chOpID) (mID, error) {
		if r.actor > uint64(len(c.others)) {
			return mID{}, errNotMaterialized
		}
		return mID{r.ctr, string(c.actorOf(r.actor))}, nil
	}
	author := string(c.actor)
	for i := range c.ops {
		op := &c.ops[i]
		self := mID{c.startOp + uint64(i), author}
		var objID mID
		if op.obj.ctr != 0 {
			var err error
			if objID, err = id(op.obj); err != nil {
				return err
			}
		}
		obj := m.objs[objID]
		if obj == nil {
			return errNotMaterialized
		}
		var delta int64
		if op.action == actIncrement {
			switch op.val.code {
			case valInt:
				delta = op.val.i
			case valUint:
				delta = int64(op.val.u)
			default:
				return errNotMaterialized
			}
		}
		for _, p := range op.pred {
			pid, err := id(p)
			if err != nil {
				return err
			}
			prev := m.ops[pid]
			if prev == nil {
				// A predecessor that is not a value (a delete or an
				// increment) cannot be named; only a crafted change would.
				return errNotMaterialized
			}
			if op.action == actIncrement && prev.action == actSet && prev.val.code == valCounter {
				prev.inc += delta
			} else {
				// An increment of a value that is not a counter (one
				// set concurrently with it) hides it, as any other
				// successor does.
				prev.succ++
			}
		}
		switch op.action {
		case actDelete, actIncrement:
			if op.insert {
				return errNotMaterialized
			}
			continue
		case actSet, actMakeMap, actMakeList, actMakeText:
		default:
			return errNotMaterialized // tables, marks, actions added later
		}
		if op.action == actSet && op.val.code > valTimestamp {
			return errNotMaterialized
		}
		v := &mOp{id: self, action: op.action, val: op.val}
		if op.action == actSet && (op.val.code == valString || op.val.code == valBytes || op.val.code == valFloat) {
			v.val.raw = slices.Clone(op.val.raw) // the payload's bytes are not kept
		}
		m.ops[self] = v
		if err := m.place(obj, op, self, v, id); err != nil {
			return err
		}
		if op.action != actSet {
			o := &mObj{action: op.action}
			if op.action == actMakeMap {
				o.keys = map[string][]*mOp{}
			} else {
				o.elems = map[mID]*mElem{}
			}
			m.objs[self] = o
		}
	}
	return nil
}

// place puts a value operation under its key in obj.
func (m *materializer) place(obj *mObj, op *chOp, self mID, v *mOp, id func(chOpID) (mID, error)) error {
	if obj.action == actMakeMap {
		if op.kind != keyProp || op.insert {
			return errNotMaterialized
		}
		obj.keys[op.prop] = append(obj.keys[op.prop], v)
		return nil
	}
	var at *mElem
	switch op.kind {
	case keyHead:
		at = &obj.head
	case keyElem:
		eid, err := id(op.elem)
		if err != nil {
			return err
		}
		if at = obj.elems[eid]; at == nil {
			return errNotMaterialized
		}
	default:
		return errNotMaterialized
	}
	if !op.insert {
		if at == &obj.head {
			return errNotMaterialized
		}
		at.ops = append(at.ops, v)
		return nil
	}
	e := &mElem{id: self, ops: []*mOp{v}}
	obj.elems[self] = e
	at.children = append(at.children, e)
	return nil
}

// winner is the visible operation with the greatest ID, or nil.
func winner(ops []*mOp) *mOp {
	var w *mOp
	for _, o := range ops {
		if o.visible() && (w == nil || o.id.after(w.id)) {
			w = o
		}
	}
	return w
}

// value is obj's value as [Doc.TypedFields] reads it.
func (m *materializer) value(obj *mObj, depth int) (any, error) {
	if depth > maxPackedDepth {
		return nil, errNotMaterialized
	}
	switch obj.action {
	case actMakeMap:
		out := make(map[string]any, len(obj.keys))
		for k, ops := range obj.keys {
			w := winner(ops)
			if w == nil {
				continue
			}
			v, err := m.opValue(w, depth)
			if err != nil {
				return nil, err
			}
			out[k] = v
		}
		return out, nil
	case actMakeList:
		out := []any{}
		err := m.walk(&obj.head, func(w *mOp) error {
			v, err := m.opValue(w, depth)
			out = append(out, v)
			return err
		})
		return out, err
	default: // text
		var sb strings.Builder
		err := m.walk(&obj.head, func(w *mOp) error {
			if w.action != actSet || w.val.code != valString {
				return errNotMaterialized
			}
			sb.Write(w.val.raw)
			return nil
		})
		return Text(sb.String()), err
	}
}

// walk calls f with the winning operation of each visible element of a
// sequence, in order: depth first from the start, each element's children
// (inserted after it) in descending ID order. It walks with a stack, as a
// sequence typed one character at a time is a chain as long as its text.
func (m *materializer) walk(head *mElem, f func(*mOp) error) error {
	stack := []*mElem{head}
	for len(stack) > 0 {
		e := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if e != head {
			if w := winner(e.ops); w != nil {
				if err := f(w); err != nil {
					return err
				}
			}
		}
		// Pushed in ascending order, so the greatest ID is taken first.
		slices.SortFunc(e.children, func(a, b *mElem) int {
			if a.id.after(b.id) {
				return 1
			}
			return -1
		})
		stack = append(stack, e.children...)
	}
	return nil
}

// opValue is a winning operation's value.
func (m *materializer) opValue(o *mOp, depth int) (any, error) {
	if o.action != actSet {
		return m.value(m.objs[o.id], depth+1)
	}
	v := o.val
	switch v.code {
	case valNull:
		return nil, nil
	case valFalse:
		return false, nil
	case valTrue:
		return true, nil
	case valUint:
		return v.u, nil
	case valInt:
		return v.i, nil
	case valFloat:
		return math.Float64frombits(binary.LittleEndian.Uint64(v.raw)), nil
	case valString:
		return string(v.raw), nil
	case valBytes:
		return slices.Clone(v.raw), nil
	case valCounter:
		return Counter(v.i + o.inc), nil
	case valTimestamp:
		return time.UnixMilli(v.i).UTC(), nil
	}
	return nil, errNotMaterialized
}

// readDeferred reads a deferred document's tombstone and packed fields
// from its changes (materialize), or returns those read before if no
// import came since (packed then nil once PackedFields handed it out);
// ok is false if they are left to Automerge, or do not pack (nested too
// deeply), and the caller builds the document.
//
// A document is read from its changes once: reading it again after
// another import builds it instead. materialize replays the whole
// history, so a record that goes on taking changes (a live stream of
// edits) would cost in proportion to its history at every one; built, it
// costs in proportion to each change.
func (d *Doc) readDeferred() (deleted bool, packed []byte, ok bool) {
	def := d.def
	if def.read && def.readLen == len(def.data) {
		return def.deleted, def.packed, true
	}
	if def.read {
		return false, nil, false
	}
	def.read = true
	fields, deleted, err := materialize(def.data)
	if err != nil {
		return false, nil, false
	}
	if packed, err = PackFields(fields); err != nil {
		return false, nil, false
	}
	def.readLen, def.deleted, def.packed = len(def.data), deleted, packed
	return deleted, packed, true
}
