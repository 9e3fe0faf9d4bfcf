package crdt

import "bytes"

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
	// valueBytes is the length of the value column: the bytes of the
	// values the operations set (strings, bytes, numbers).
	valueBytes int
	header     []byte // the bytes before the column metadata

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
