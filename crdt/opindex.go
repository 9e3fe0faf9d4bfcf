package crdt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/automerge/automerge-go"
)

// A canonical encoding is not enough for a change to survive Save and
// Load: the document keeps only what applying the change left in its
// operation set, and Load rebuilds the change from that. Automerge applies
// a change without checking what its operations refer to, and silently
// loses what does not fit: an operation on an object the document does not
// hold is dropped; a predecessor that is not at the operation's key (or
// not older than it) is not found, so the link is lost; a delete whose
// predecessors are all lost leaves nothing at all. Each loss makes the
// rebuilt change differ, and the document stop loading. (Some of these
// also crash the Rust core, which aborts the process: a map key in a list
// reaches a panic in its key comparison.)
//
// The checks here refuse a change unless every operation it refers to is
// one the document holds (or an earlier operation of the same stream),
// of the right kind, in the right place, and older. Automerge's own
// changes always are: an operation can only refer to what its author's
// document held, and its counter is above every counter there. To check in
// time proportional to the change, a Doc keeps an index of its operations
// (opIndex), built from its history on first use and extended as changes
// are imported.

// opRef names an operation in a document: its actor's bytes and counter.
// The zero opRef is the root map.
type opRef struct {
	actor string
	ctr   uint64
}

// opRec is what the checks need to know of an operation the document
// holds. Deletes are never held: they leave no operation behind.
type opRec struct {
	obj    opRef
	elem   opRef  // the element the key names (keyElem)
	prop   string // the map key (keyProp)
	kind   keyKind
	action uint8
	insert bool
}

func isMake(action uint8) bool {
	return action == actMakeMap || action == actMakeList || action == actMakeText || action == actMakeTable
}

// opLayer is one immutable layer of an index: operations added together,
// over the layers below. Layers are shared between a Doc and its forks, so
// they are never written once published.
type opLayer struct {
	parent *opLayer
	ops    map[opRef]opRec
	packed *packedOps        // instead of ops, in a large layer (see oppacked.go)
	maxOp  map[string]uint64 // per actor, the last operation counter of its changes
	size   int
	depth  int
	held   held // what the layer's changes hold, for Doc.Cost
}

func newLayer(parent *opLayer) *opLayer {
	return &opLayer{parent: parent, ops: map[opRef]opRec{}, maxOp: map[string]uint64{}}
}

func (l *opLayer) get(r opRef) (opRec, bool) {
	for ; l != nil; l = l.parent {
		if l.packed != nil {
			if v, ok := l.packed.get(r); ok {
				return v, true
			}
		} else if v, ok := l.ops[r]; ok {
			return v, true
		}
	}
	return opRec{}, false
}

// count returns how many operations l holds (not its parents).
func (l *opLayer) count() int {
	if l.packed != nil {
		return l.packed.len()
	}
	return len(l.ops)
}

// each calls f with each operation l holds (not its parents').
func (l *opLayer) each(f func(opRef, opRec)) {
	if l.packed != nil {
		l.packed.each(f)
		return
	}
	for k, v := range l.ops {
		f(k, v)
	}
}

// actorMax returns the highest operation counter of actor's changes.
// Counters only grow, so the topmost layer that knows the actor is right.
func (l *opLayer) actorMax(actor string) (uint64, bool) {
	for ; l != nil; l = l.parent {
		if v, ok := l.maxOp[actor]; ok {
			return v, true
		}
	}
	return 0, false
}

// maxLayers bounds the layers a lookup walks.
const maxLayers = 24

// pushLayer puts l on top of top and returns the new top. Layers merge,
// smallest first, whenever the one below is not more than twice as large,
// so an index of n operations has O(log n) layers and each operation is
// copied O(log n) times over its life. A layer of packMin operations or
// more is packed (l itself, which is not published yet, if it is that
// large).
func pushLayer(top, l *opLayer) *opLayer {
	l.parent = top
	l.size = l.count() + len(l.maxOp)
	for l.parent != nil && (l.parent.size <= 2*l.size || l.parent.depth+1 > maxLayers) {
		l = mergeLayers(l.parent, l)
	}
	if l.packed == nil && len(l.ops) >= packMin {
		b := newPacker(len(l.ops))
		b.addLayer(l)
		l.packed, l.ops = b.pack(), nil
	}
	if l.parent != nil {
		l.depth = l.parent.depth + 1
	}
	return l
}

func mergeLayers(lower, upper *opLayer) *opLayer {
	m := &opLayer{
		parent: lower.parent,
		maxOp:  make(map[string]uint64, len(lower.maxOp)+len(upper.maxOp)),
	}
	if n := lower.count() + upper.count(); n >= packMin {
		b := newPacker(n)
		b.addLayer(lower)
		b.addLayer(upper)
		m.packed = b.pack()
	} else {
		m.ops = make(map[opRef]opRec, n)
		for _, x := range []*opLayer{lower, upper} {
			x.each(func(k opRef, v opRec) { m.ops[k] = v })
		}
	}
	for _, x := range []*opLayer{lower, upper} {
		for k, v := range x.maxOp {
			m.maxOp[k] = max(m.maxOp[k], v)
		}
		m.held.add(x.held)
	}
	m.size = m.count() + len(m.maxOp)
	return m
}

// opIndex is a Doc's index of its operations as of heads at.
type opIndex struct {
	top *opLayer
	at  Heads
	// unread are changes of the document as of at whose operations are
	// not in top's layers yet: mostly the document's own commits, which an
	// import of another device's changes seldom refers to. An operation
	// is named by its author, and a change can refer only to operations
	// of the actors it names, so an import reads the unread changes of
	// each actor its changes name before checking them (see
	// verifyChanges), and leaves the others unread; Cost reads them all.
	// Never appended to in place: forks share it.
	unread []unreadChange
}

// unreadChange is a change whose operations an index has yet to read.
type unreadChange struct {
	actor   string // its author
	hash    Hash
	payload []byte
}

// Bounds on an index's unread changes: past them, index reads them all.
const (
	maxUnread      = 256
	maxUnreadBytes = 64 << 10
)

// errUnreadable is verifyChanges' error when a change the document holds
// cannot be decoded: the index is unavailable, as index reports it.
var errUnreadable = errors.New("crdt: a change of the document cannot be indexed")

// readUnread adds to l the operations of the unread changes whose author
// is one of actors, and returns the changes left unread (unread itself
// when there are none to read; otherwise a new slice).
func readUnread(l *opLayer, unread []unreadChange, actors []string) ([]unreadChange, error) {
	named := func(u unreadChange) bool { return slices.Contains(actors, u.actor) }
	if !slices.ContainsFunc(unread, named) {
		return unread, nil
	}
	left := make([]unreadChange, 0, len(unread))
	for _, u := range unread {
		if !named(u) {
			left = append(left, u)
			continue
		}
		c, err := decodeChange(u.payload)
		if err != nil {
			return nil, fmt.Errorf("%w: change %s: %v", errUnreadable, u.hash, err)
		}
		l.add(c)
	}
	return left, nil
}

// payloadActor returns the author of a change payload, from its header.
func payloadActor(p []byte) (string, bool) {
	r := reader{b: p}
	n := r.uleb()
	if r.err != nil || n > uint64(len(r.b)/HashSize) {
		return "", false
	}
	r.bytes(n * HashSize)
	a := r.bytes(r.uleb())
	return string(a), r.err == nil
}

// index returns the document's operation index, bringing it up to date
// with changes made or imported since it was last used. It fails if a
// change in the history cannot be decoded (one imported before these
// checks existed, say); Import then checks the slow way.
func (d *Doc) index() (*opIndex, error) {
	return d.indexAt(d.Heads())
}

// indexAt is index for a document whose heads are heads.
func (d *Doc) indexAt(heads Heads) (*opIndex, error) {
	x := d.idx.Load()
	if x != nil && x.at.Equal(heads) {
		return x, nil
	}
	var top *opLayer
	var since Heads
	var unread []unreadChange
	if x != nil {
		// The index may be a fork's parent's: it goes on from a version
		// of the parent that the fork does not hold. One this document
		// had is held.
		if d.syncJournal(heads); d.jn.isMark(x.at) || d.hasAll(x.at) == nil {
			top, since, unread = x.top, x.at, x.unread
		}
	}
	if len(since) == 0 {
		top, unread = nil, nil // no heads: the whole history
	}
	// The changes since the index, from the payloads the journal keeps
	// when it covers them, else from Automerge.
	es, ok, err := d.journalPayloads(since, heads)
	if err == nil && !ok {
		var chs []*automerge.Change
		chs, err = d.changesSince(since, heads)
		es = make([]jentry, len(chs))
		for i, ch := range chs {
			es[i] = jentry{hash: Hash(ch.Hash()), payload: chunkPayload(ch.Save())}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("crdt: changes: %w", err)
	}
	// The changes since are left unread (see opIndex.unread) while they
	// are few; then every unread change is read.
	if n, size := len(unread)+len(es), unreadBytes(unread)+jentryBytes(es); n <= maxUnread && size <= maxUnreadBytes {
		more := make([]unreadChange, len(unread), n)
		copy(more, unread)
		ok := true
		for _, e := range es {
			a, good := payloadActor(e.payload)
			if ok = good; !ok {
				break
			}
			more = append(more, unreadChange{actor: a, hash: e.hash, payload: e.payload})
		}
		if ok {
			x = &opIndex{top: top, at: heads, unread: more}
			d.idx.Store(x)
			return x, nil
		}
	}
	l := newLayer(top)
	read := func(hash Hash, payload []byte) error {
		c, err := decodeChange(payload)
		if err != nil {
			d.idx.Store(nil)
			return fmt.Errorf("change %s: %w", hash, err)
		}
		l.add(c)
		return nil
	}
	for _, u := range unread {
		if err := read(u.hash, u.payload); err != nil {
			return nil, err
		}
	}
	for _, e := range es {
		if err := read(e.hash, e.payload); err != nil {
			return nil, err
		}
	}
	x = &opIndex{top: pushLayer(top, l), at: heads}
	d.idx.Store(x)
	return x, nil
}

// fullIndex is index with every change read: what Cost counts and the
// operation limit needs.
func (d *Doc) fullIndex(heads Heads) (*opIndex, error) {
	x, err := d.indexAt(heads)
	if err != nil || len(x.unread) == 0 {
		return x, err
	}
	l := newLayer(x.top)
	for _, u := range x.unread {
		c, err := decodeChange(u.payload)
		if err != nil {
			d.idx.Store(nil)
			return nil, fmt.Errorf("change %s: %w", u.hash, err)
		}
		l.add(c)
	}
	x = &opIndex{top: pushLayer(x.top, l), at: x.at}
	d.idx.Store(x)
	return x, nil
}

func unreadBytes(us []unreadChange) int {
	n := 0
	for _, u := range us {
		n += len(u.payload)
	}
	return n
}

func jentryBytes(es []jentry) int {
	n := 0
	for _, e := range es {
		n += len(e.payload)
	}
	return n
}

// chunkPayload returns the payload of a whole change chunk.
func chunkPayload(chunk []byte) []byte {
	if len(chunk) < 10 {
		return nil
	}
	n, ln := binary.Uvarint(chunk[9:])
	if ln <= 0 || n > uint64(len(chunk)-9-ln) {
		return nil
	}
	return chunk[9+ln : 9+ln+int(n)]
}

// actorStrings returns a change's actors (author first) as strings.
func (c *change) actorStrings() []string {
	out := make([]string, 1+len(c.others))
	out[0] = string(c.actor)
	for i, a := range c.others {
		out[i+1] = string(a)
	}
	return out
}

func ref(actors []string, id chOpID) opRef {
	if id.ctr == 0 {
		return opRef{} // counter 0 is the root (Rust reads it so)
	}
	return opRef{actor: actors[id.actor], ctr: id.ctr}
}

// add records a change's operations in l, unchecked.
func (l *opLayer) add(c *change) {
	actors := c.actorStrings()
	for i, op := range c.ops {
		if op.action == actDelete {
			continue
		}
		l.ops[opRef{actors[0], c.startOp + uint64(i)}] = recOf(actors, op)
	}
	last := c.startOp + uint64(len(c.ops)) - 1
	l.maxOp[actors[0]] = max(l.maxOp[actors[0]], last)
	l.held.count(c)
}

func recOf(actors []string, op chOp) opRec {
	r := opRec{obj: ref(actors, op.obj), kind: op.kind, prop: op.prop, action: uint8(op.action), insert: op.insert}
	if op.kind == keyElem {
		r.elem = opRef{actor: actors[op.elem.actor], ctr: op.elem.ctr}
	}
	return r
}

// check checks a change against the operations l holds (the document's,
// and those of the changes checked before it in the same stream), then
// adds its operations to l.
func (l *opLayer) check(c *change) error {
	actors := c.actorStrings()
	if c.startOp > math.MaxUint32 {
		return fmt.Errorf("start op %d is too large", c.startOp)
	}
	if m, ok := l.actorMax(actors[0]); ok && c.startOp <= m {
		return fmt.Errorf("start op %d reuses counters of the actor's earlier changes (up to %d)", c.startOp, m)
	}
	for i, op := range c.ops {
		id := opRef{actors[0], c.startOp + uint64(i)}
		if err := l.checkOp(actors, id, op); err != nil {
			return fmt.Errorf("operation %d (%d@%x): %w", i, id.ctr, id.actor, err)
		}
		if op.action != actDelete {
			l.ops[id] = recOf(actors, op)
		}
	}
	l.maxOp[actors[0]] = max(l.maxOp[actors[0]], c.startOp+uint64(len(c.ops))-1)
	l.held.count(c)
	return nil
}

// checkOp checks one operation: see the comment at the top of the file.
func (l *opLayer) checkOp(actors []string, id opRef, op chOp) error {
	rec := recOf(actors, op)
	seq := false
	if rec.obj != (opRef{}) {
		o, ok := l.get(rec.obj)
		if !ok || !isMake(o.action) || rec.obj.ctr >= id.ctr {
			return fmt.Errorf("object %d@%x is not an older object of the document", rec.obj.ctr, rec.obj.actor)
		}
		seq = o.action == actMakeList || o.action == actMakeText
	}
	switch {
	case !seq && op.kind != keyProp:
		return errors.New("a sequence position in a map")
	case seq && op.kind == keyProp:
		return errors.New("a map key in a sequence")
	case !seq && op.insert:
		return errors.New("an insert into a map")
	case op.kind == keyHead && !op.insert:
		return errors.New("only an insert can name the start of a sequence")
	case op.kind == keyElem:
		e, ok := l.get(rec.elem)
		if !ok || !e.insert || e.obj != rec.obj || rec.elem.ctr >= id.ctr {
			return fmt.Errorf("element %d@%x is not an older element of the object", rec.elem.ctr, rec.elem.actor)
		}
	}
	switch {
	case op.insert && len(op.pred) > 0:
		return errors.New("an insert with predecessors")
	case op.insert && (op.action == actIncrement || op.action == actDelete):
		return fmt.Errorf("an inserted action %d", op.action)
	case !op.insert && op.action == actMark:
		return errors.New("a mark that is not inserted")
	case op.action == actDelete && len(op.pred) == 0:
		return errors.New("a delete with no predecessor")
	}
	for j, p := range op.pred {
		pr := opRef{actor: actors[p.actor], ctr: p.ctr}
		prec, ok := l.get(pr)
		switch {
		case !ok || pr.ctr >= id.ctr:
			return fmt.Errorf("predecessor %d@%x is not an older operation the document holds", pr.ctr, pr.actor)
		case prec.obj != rec.obj || !sameKey(prec, pr, rec):
			return fmt.Errorf("predecessor %d@%x is not at the operation's key", pr.ctr, pr.actor)
		case j == 0 && op.action == actDelete && prec.action != actSet && !isMake(prec.action):
			// Load rebuilds a delete's key from its first predecessor,
			// which must be a value or an object.
			return fmt.Errorf("the delete's first predecessor %d@%x is neither a value nor an object", pr.ctr, pr.actor)
		}
	}
	return nil
}

// sameKey reports whether the operation p (named pr) sits at the key of
// the operation rec, where Automerge looks for rec's predecessors.
func sameKey(p opRec, pr opRef, rec opRec) bool {
	switch rec.kind {
	case keyProp:
		return p.kind == keyProp && !p.insert && p.prop == rec.prop
	case keyElem:
		if p.insert {
			return pr == rec.elem
		}
		return p.kind == keyElem && p.elem == rec.elem
	}
	return false
}

// Estimated bytes per entry of an index layer's maps, measured with
// BenchmarkIndexMemory while every layer was a map: the entry (key and
// value) with the map's slack, and what an entry's strings point to. (A
// packed layer counts its own: see packedOps.memSize; the benchmark now
// reports 33 bytes an operation, as memSize counts it.)
const (
	opEntryBytes  = 175
	maxEntryBytes = 64
	seqEntryBytes = 64
)

// unreadSize estimates the bytes x's unread changes hold.
func (x *opIndex) unreadSize() int {
	return unreadBytes(x.unread) + len(x.unread)*(HashSize+48)
}

// memSize estimates the bytes l holds (not its parents).
func (l *opLayer) memSize() int {
	n := len(l.ops)*opEntryBytes + len(l.maxOp)*maxEntryBytes
	if l.packed != nil {
		n += l.packed.memSize()
	}
	return n
}
