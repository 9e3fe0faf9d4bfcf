package crdt

import (
	"cmp"
	"slices"
	"unsafe"
)

// A large layer of an operation index is packed: its operations in sorted
// arrays rather than a map, some 35 to 50 bytes an operation instead of
// 175. An index of a record of many small objects is then a fifth of its
// size, so that a process holding many records' indexes without their
// Automerge documents (the relay's deferred documents) holds several
// times as many in the same memory. Layers are immutable once published,
// so a layer is packed as it is made: when merged layers reach packMin
// operations, or when a layer that large is pushed (a document's whole
// history, indexed at once).

// packMin is the size from which a layer is packed. Smaller layers (a
// push's changes) stay maps, which take an operation in less time.
const packMin = 1024

// packedOps is a packed layer's operations. Each operation's counter is
// found in the runs of its actor (consecutive counters of held operations,
// in order), whose record it points to.
type packedOps struct {
	actors    []string          // interned actors; records name them by index
	actorAt   map[string]uint32 // actors' indexes
	actorRuns []uint32          // runs of actor a: runs[actorRuns[a]:actorRuns[a+1]]
	runs      []opRun
	props     []string // interned map keys
	recs      []packedRec
}

// opRun is a run of operations of one actor with consecutive counters.
type opRun struct {
	start uint64 // the first operation's counter
	at    uint32 // its record's index in recs
	n     uint32 // how many operations
}

// packedRec is opRec with its actors and key interned.
type packedRec struct {
	objCtr, elemCtr     uint64
	objActor, elemActor uint32
	prop                uint32
	kind                keyKind
	action              uint8
	insert              bool
}

func (p *packedOps) get(r opRef) (opRec, bool) {
	a, ok := p.actorAt[r.actor]
	if !ok {
		return opRec{}, false
	}
	runs := p.runs[p.actorRuns[a]:p.actorRuns[a+1]]
	// The last run that starts at or before the counter.
	i, found := slices.BinarySearchFunc(runs, r.ctr, func(x opRun, c uint64) int { return cmp.Compare(x.start, c) })
	if !found {
		i--
	}
	if i < 0 || r.ctr-runs[i].start >= uint64(runs[i].n) {
		return opRec{}, false
	}
	return p.rec(runs[i].at + uint32(r.ctr-runs[i].start)), true
}

func (p *packedOps) rec(i uint32) opRec {
	x := p.recs[i]
	return opRec{
		obj:    opRef{actor: p.actors[x.objActor], ctr: x.objCtr},
		elem:   opRef{actor: p.actors[x.elemActor], ctr: x.elemCtr},
		prop:   p.props[x.prop],
		kind:   x.kind,
		action: x.action,
		insert: x.insert,
	}
}

// each calls f with every operation, in order of actor and counter.
func (p *packedOps) each(f func(opRef, opRec)) {
	for a := range p.actors {
		for _, run := range p.runs[p.actorRuns[a]:p.actorRuns[a+1]] {
			for k := range run.n {
				f(opRef{actor: p.actors[a], ctr: run.start + uint64(k)}, p.rec(run.at+k))
			}
		}
	}
}

func (p *packedOps) len() int { return len(p.recs) }

// memSize estimates the bytes p holds: its arrays, the strings it interns
// (their bytes are usually shared with the changes decoded, but may not
// be) and the actors' map.
func (p *packedOps) memSize() int {
	n := cap(p.recs)*int(unsafe.Sizeof(packedRec{})) + cap(p.runs)*int(unsafe.Sizeof(opRun{})) + cap(p.actorRuns)*4
	for _, a := range p.actors {
		n += len(a) + 16 + maxEntryBytes
	}
	for _, s := range p.props {
		n += len(s) + 16
	}
	return n
}

// packer builds a packedOps from operations given in any order; a later
// one with the same ID replaces an earlier one, as in a map.
type packer struct {
	actorAt map[string]uint32
	actors  []string
	propAt  map[string]uint32
	props   []string
	ents    []packEntry
	// the last actor interned, to skip the map for runs of one actor
	lastActor string
	lastAt    uint32
}

type packEntry struct {
	ctr   uint64
	actor uint32
	rec   packedRec
}

func newPacker(n int) *packer {
	return &packer{actorAt: map[string]uint32{}, propAt: map[string]uint32{}, ents: make([]packEntry, 0, n)}
}

func (b *packer) actor(s string) uint32 {
	if len(b.actors) > 0 && s == b.lastActor {
		return b.lastAt
	}
	i, ok := b.actorAt[s]
	if !ok {
		i = uint32(len(b.actors))
		b.actorAt[s] = i
		b.actors = append(b.actors, s)
	}
	b.lastActor, b.lastAt = s, i
	return i
}

func (b *packer) prop(s string) uint32 {
	i, ok := b.propAt[s]
	if !ok {
		i = uint32(len(b.props))
		b.propAt[s] = i
		b.props = append(b.props, s)
	}
	return i
}

func (b *packer) add(k opRef, v opRec) {
	b.ents = append(b.ents, packEntry{ctr: k.ctr, actor: b.actor(k.actor), rec: packedRec{
		objCtr: v.obj.ctr, objActor: b.actor(v.obj.actor),
		elemCtr: v.elem.ctr, elemActor: b.actor(v.elem.actor),
		prop: b.prop(v.prop), kind: v.kind, action: v.action, insert: v.insert,
	}})
}

// addLayer adds a layer's operations (not its parents').
func (b *packer) addLayer(l *opLayer) {
	if l.packed != nil {
		l.packed.each(b.add)
		return
	}
	for k, v := range l.ops {
		b.add(k, v)
	}
}

func (b *packer) pack() *packedOps {
	// Entries by actor (a counting sort, keeping the order added), then
	// each actor's by counter: keys are small to move, and of two
	// entries for one operation the later added (higher i) wins.
	na := len(b.actors)
	first := make([]uint32, na+1) // actor a's keys: keys[first[a]:first[a+1]]
	for _, e := range b.ents {
		first[e.actor+1]++
	}
	for a := 1; a <= na; a++ {
		first[a] += first[a-1]
	}
	keys := make([]packKey, len(b.ents))
	next := slices.Clone(first[:na])
	for i, e := range b.ents {
		keys[next[e.actor]] = packKey{ctr: e.ctr, i: uint32(i)}
		next[e.actor]++
	}
	p := &packedOps{actors: b.actors, actorAt: b.actorAt, props: b.props, actorRuns: make([]uint32, na+1)}
	p.recs = make([]packedRec, 0, len(keys))
	for a := range na {
		seg := keys[first[a]:first[a+1]]
		slices.SortFunc(seg, func(x, y packKey) int { return cmp.Or(cmp.Compare(x.ctr, y.ctr), cmp.Compare(x.i, y.i)) })
		for j, k := range seg {
			if j+1 < len(seg) && seg[j+1].ctr == k.ctr {
				continue
			}
			at := uint32(len(p.recs))
			p.recs = append(p.recs, b.ents[k.i].rec)
			if last := len(p.runs) - 1; last >= int(p.actorRuns[a]) && p.runs[last].start+uint64(p.runs[last].n) == k.ctr && p.runs[last].n < 1<<31 {
				p.runs[last].n++
				continue
			}
			p.runs = append(p.runs, opRun{start: k.ctr, at: at, n: 1})
		}
		p.actorRuns[a+1] = uint32(len(p.runs))
	}
	p.recs = slices.Clip(p.recs)
	p.runs = slices.Clip(p.runs)
	return p
}

// packKey is an entry's counter and its index in the order added.
type packKey struct {
	ctr uint64
	i   uint32
}
