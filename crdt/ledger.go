package crdt

import (
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"github.com/automerge/automerge-go"
)

// A ledger is a record's history as Go alone knows it: the changes held
// (hash and author), its heads, each actor's last sequence number, and the
// operation index. It checks changes as Import does before it applies
// them (framing, canonical encoding, dependencies, sequence numbers, the
// operations they refer to, the operation limit), but applies nothing to
// an Automerge document: a deferred Doc (NewDeferred) imports through it,
// and builds its document only when something needs one.
type ledger struct {
	held  smallMap[Hash, author]
	heads smallMap[Hash, struct{}]
	seqs  smallMap[string, uint64] // per actor, its highest sequence number held
	top   *opLayer
	ops   int // operations held, weighted by their values (changeWeight)
	// maxOps is the limit of SetMaxOps; 0: none.
	maxOps int
}

var errLedgerDocument = errors.New("crdt: a whole document cannot be checked without loading it")

func newLedger() *ledger { return &ledger{} }

// smallMap is a map that keeps its first few entries in a slice: most
// records a relay checks hold one change or a few, and a Go map's first
// entry costs a few hundred bytes, kept while the record is. Past
// smallMapMax entries it moves them to a map.
type smallMap[K comparable, V any] struct {
	list []smallEntry[K, V]
	m    map[K]V
}

type smallEntry[K comparable, V any] struct {
	k K
	v V
}

const smallMapMax = 8

func (s *smallMap[K, V]) get(k K) (V, bool) {
	if s.m != nil {
		v, ok := s.m[k]
		return v, ok
	}
	for _, e := range s.list {
		if e.k == k {
			return e.v, true
		}
	}
	var zero V
	return zero, false
}

func (s *smallMap[K, V]) has(k K) bool {
	_, ok := s.get(k)
	return ok
}

func (s *smallMap[K, V]) set(k K, v V) {
	if s.m != nil {
		s.m[k] = v
		return
	}
	for i := range s.list {
		if s.list[i].k == k {
			s.list[i].v = v
			return
		}
	}
	if len(s.list) < smallMapMax {
		s.list = append(s.list, smallEntry[K, V]{k, v})
		return
	}
	s.m = make(map[K]V, 2*smallMapMax)
	for _, e := range s.list {
		s.m[e.k] = e.v
	}
	s.m[k] = v
	s.list = nil
}

func (s *smallMap[K, V]) delete(k K) {
	if s.m != nil {
		delete(s.m, k)
		return
	}
	for i := range s.list {
		if s.list[i].k == k {
			s.list = slices.Delete(s.list, i, i+1)
			return
		}
	}
}

func (s *smallMap[K, V]) len() int {
	if s.m != nil {
		return len(s.m)
	}
	return len(s.list)
}

// each calls f with every entry, in no order.
func (s *smallMap[K, V]) each(f func(K, V)) {
	if s.m != nil {
		for k, v := range s.m {
			f(k, v)
		}
		return
	}
	for _, e := range s.list {
		f(e.k, e.v)
	}
}

// ledgerOf builds the ledger of a document's history (a walk of it).
func ledgerOf(d *Doc) (*ledger, error) {
	chs, err := d.live().Changes()
	if err != nil {
		return nil, err
	}
	l := newLedger()
	layer := newLayer(nil)
	for _, ch := range chs {
		h := Hash(ch.Hash())
		c, err := decodeChange(chunkPayload(ch.Save()))
		if err != nil {
			return nil, fmt.Errorf("change %s: %w", h, err)
		}
		layer.add(c)
		l.ops += changeWeight(c)
		// The author from the decoded change: asking automerge-go costs a
		// call per change, more than the decoding.
		who := author{actor: hex.EncodeToString(c.actor), seq: c.seq}
		l.held.set(h, who)
		last, _ := l.seqs.get(who.actor)
		l.seqs.set(who.actor, max(last, who.seq))
	}
	for _, h := range d.Heads() {
		l.heads.set(h, struct{}{})
	}
	l.top = pushLayer(nil, layer)
	l.maxOps = d.maxOps
	return l, nil
}

// check checks a stream of change chunks as Import would, and takes in
// those it adds. It returns how many were new. On an error the ledger is
// unchanged.
func (l *ledger) check(data []byte) (int, error) {
	ci, err := frame(data)
	if err != nil {
		return 0, err
	}
	return l.checkFramed(ci)
}

// smallStream is the most changes a stream may hold for checkFramed to
// find what it holds by scanning rather than with maps: a push holds one
// or a few, and the maps cost more than the scans.
const smallStream = 16

// checkFramed is check of a stream framed as ci.
func (l *ledger) checkFramed(ci chunkInfo) (int, error) {
	if ci.documents > 0 {
		return 0, errLedgerDocument
	}
	// Fresh changes, in stream order, each after its dependencies: held
	// ones, or fresh ones before it.
	var freshBuf [4]int
	fresh := freshBuf[:0]
	var inStream map[Hash]bool
	var top map[string]uint64
	if len(ci.changes) > smallStream {
		inStream = make(map[Hash]bool, len(ci.changes))
		top = map[string]uint64{}
	}
	isFresh := func(h Hash) bool {
		if inStream != nil {
			return inStream[h]
		}
		for _, j := range fresh {
			if ci.changes[j].Hash == h {
				return true
			}
		}
		return false
	}
	// lastFresh is the highest sequence number of actor among the fresh
	// changes so far (each is one more than the one before).
	lastFresh := func(actor string) uint64 {
		if top != nil {
			return top[actor]
		}
		for k := len(fresh) - 1; k >= 0; k-- {
			if who := ci.authors[fresh[k]]; who.actor == actor {
				return who.seq
			}
		}
		return 0
	}
	for i, c := range ci.changes {
		if l.held.has(c.Hash) || isFresh(c.Hash) {
			continue
		}
		for _, dep := range c.Deps {
			if !l.held.has(dep) && !isFresh(dep) {
				return 0, fmt.Errorf("%w: %s needs %s", ErrMissingDeps, c.Hash, dep)
			}
		}
		// Each actor's changes are numbered 1, 2, 3 with no gap and no
		// number taken twice (Automerge refuses the second): the next
		// number is the one after the highest held.
		who := ci.authors[i]
		held, _ := l.seqs.get(who.actor)
		last := max(held, lastFresh(who.actor))
		if who.seq != last+1 {
			return 0, fmt.Errorf("%w: change %s is number %d of actor %s, whose last is %d", ErrCorrupt, c.Hash, who.seq, who.actor, last)
		}
		if top != nil {
			top[who.actor] = who.seq
			inStream[c.Hash] = true
		}
		fresh = append(fresh, i)
	}
	if len(fresh) == 0 {
		return 0, nil
	}
	// The checks verifyChanges makes, without its lists of the fresh
	// changes' payloads and hashes.
	v := verified{layer: newLayer(l.top)}
	c := getChange()
	defer putChange(c)
	for _, i := range fresh {
		if err := v.check(c, ci.payloads[i], ci.changes[i].Hash); err != nil {
			return 0, err
		}
	}
	if l.maxOps > 0 && l.ops+v.ops > l.maxOps {
		return 0, fmt.Errorf("%w: %d operations, values counted, over %d", ErrOpLimit, l.ops+v.ops, l.maxOps)
	}
	// Checked: take them in.
	l.top = pushLayer(l.top, v.layer)
	l.ops += v.ops
	for _, i := range fresh {
		c, who := ci.changes[i], ci.authors[i]
		l.held.set(c.Hash, who)
		for _, dep := range c.Deps {
			l.heads.delete(dep)
		}
		l.heads.set(c.Hash, struct{}{})
		// In stream order, each actor's numbers rise: the last is its
		// highest.
		l.seqs.set(who.actor, who.seq)
	}
	return len(fresh), nil
}

// Framed is a stream of change chunks framed and checksummed once
// ([FrameChanges]), so that it can be estimated ([Framed.Estimate]) and
// imported ([Doc.ImportFramed]) without framing it again: framing hashes
// every change.
type Framed struct {
	data []byte
	ci   chunkInfo
}

// FrameChanges frames b as [ParseChangesWithin] does, with the same
// errors, and keeps what it learns. The result holds b (and what
// compressed chunks inflate to), which must not change while it is used.
func FrameChanges(b []byte, budget *InflateBudget) (*Framed, error) {
	ci, err := frameWithin(b, budget)
	if err != nil {
		return nil, err
	}
	return &Framed{data: b, ci: ci}, nil
}

// Changes returns the changes f carries, as [ParseChanges] does.
func (f *Framed) Changes() []ChangeInfo { return f.ci.changes }

// Estimate is [Estimate] of f's bytes.
func (f *Framed) Estimate() (Cost, error) { return estimateFramed(f.data, f.ci) }

// ImportFramed is [Doc.Import] of f's bytes, with the same result and
// errors: a deferred document (see NewDeferred) checks them without
// framing them again.
func (d *Doc) ImportFramed(f *Framed) (int, error) {
	if d.def == nil || f.ci.documents > 0 {
		return d.Import(f.data)
	}
	n, err := d.def.led.checkFramed(f.ci)
	if err == nil && n > 0 {
		d.def.data = append(d.def.data, f.data...)
	}
	return n, err
}

// headList returns the ledger's heads, sorted.
func (l *ledger) headList() Heads {
	out := make(Heads, 0, l.heads.len())
	l.heads.each(func(h Hash, _ struct{}) { out = append(out, h) })
	return sortedHeads(out)
}

// heldEntryBytes estimates the Go memory of one entry of a ledger's held
// map: the hash key, the author's actor string header and number, and the
// map's slack (the actor's bytes are shared with the operation index's).
const heldEntryBytes = 96

// memSize estimates the bytes the ledger holds.
func (l *ledger) memSize() int {
	n := l.held.len()*heldEntryBytes + l.heads.len()*HashSize + l.seqs.len()*seqEntryBytes
	for x := l.top; x != nil; x = x.parent {
		n += x.memSize()
	}
	return n
}

// held counts what the ledger's changes hold.
func (l *ledger) heldCount() held {
	var h held
	for x := l.top; x != nil; x = x.parent {
		h.add(x.held)
	}
	return h
}

// deferred is what a Doc made by NewDeferred holds until it builds its
// Automerge document: the ledger of the changes imported, and their bytes.
type deferred struct {
	led   *ledger
	data  []byte
	actor string // the built document's actor; "" for a random one

	// What readDeferred read from the changes when data was readLen
	// long: the tombstone, and the packed fields until PackedFields
	// hands them out; read says it read them (once).
	readLen int
	deleted bool
	packed  []byte
	read    bool
}

// NewDeferred returns an empty document, with a random actor, for a
// process that mostly checks and forwards changes (the relay): [Doc.Import]
// of change chunks checks them in Go alone, as Import always does before
// it applies anything, and keeps their bytes; the Automerge document is
// built from those bytes the first time a method needs it. Until then only
// Heads, Has, Import of change chunks, Cost, SetMaxOps and Free run
// without it; every other method builds it first (Import of a stream
// holding a whole document too). Its Cost is the built document's, so a
// cache that accounts it stays within its bound when it is built later.
//
// What LoadIncremental would refuse beyond Import's own checks is
// refused by those checks (TestLedgerRefusesWhatImportRefuses compares
// them over mutated and crafted changes). Building a document from
// changes they accepted and failing would be a defect in those checks:
// [Doc.Build] returns it as an [ErrCorrupt], and any other method that
// needs the document panics with it, rather than run on without them.
func NewDeferred() *Doc {
	// The journal stays unstarted: only a built document uses it, and
	// Build starts it at the heads it builds to.
	return &Doc{def: &deferred{led: newLedger()}}
}

// NewDeferredAs is [NewDeferred] for a document that writes as actor once
// built, as [New] makes one: for a device taking records it may edit
// later. Until built, [Doc.PackedFields] and [Doc.Deleted] read its
// fields from its changes in Go, where they hold only what this package
// writes (maps, lists, text, counters and scalars); anything else builds
// it first. They read them so once: after a later import, they build it,
// as a replay of the whole history at every change would cost more.
func NewDeferredAs(actor string) (*Doc, error) {
	if actor != "" {
		// As SetActorID parses it, so that Build does not fail on it.
		if _, err := hex.DecodeString(actor); err != nil {
			return nil, fmt.Errorf("crdt: actor %q: %w", actor, err)
		}
	}
	d := NewDeferred()
	d.def.actor = actor
	return d, nil
}

// LoadDeferred is Load into a deferred document (see NewDeferred): data
// is loaded and checked as Load does, its history indexed in Go, and the
// Automerge document freed; it is built again from data and what is
// imported after, the first time a method needs it. Loading costs what
// Load and the first Import's indexing cost (changes with no saved
// document before them are only checked in Go, as Import checks them);
// the imports after it run without Automerge. A history that does not
// decode in Go (changes imported before Import checked them) gives an
// error: Load it instead.
func LoadDeferred(data []byte) (*Doc, error) {
	ci, err := frame(data)
	if err != nil {
		return nil, err
	}
	head, rest := data, []byte(nil)
	if len(ci.changes) > 0 || ci.documents > 1 {
		head, rest = leadingDocument(data)
	}
	l := newLedger()
	if len(head) > 0 {
		// Only Automerge decodes a saved document: load it to index its
		// history (one walk, as a loaded document's first Import makes),
		// then free it.
		d, err := loadAM(head)
		if err != nil {
			return nil, err
		}
		l, err = ledgerOf(d)
		d.Free()
		if err != nil {
			return nil, fmt.Errorf("crdt: a history that does not decode in Go cannot be deferred: %w", err)
		}
	}
	out := &Doc{def: &deferred{led: l, data: slices.Clone(head)}} // journal as in NewDeferred
	if len(rest) > 0 {
		// The changes after it are checked as Load checks them, in Go.
		if _, err := out.Import(rest); err != nil {
			out.Free()
			if errors.Is(err, ErrCorrupt) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
	}
	return out, nil
}

// Deferred reports whether d has not built its Automerge document yet
// (see NewDeferred).
func (d *Doc) Deferred() bool { return d.def != nil }

// importDeferred is Import for a deferred Doc. ok is false if the stream
// needs the document built (it holds a whole document).
func (d *Doc) importDeferred(data []byte) (n int, ok bool, err error) {
	n, err = d.def.led.check(data)
	if errors.Is(err, errLedgerDocument) {
		return 0, false, nil
	}
	if err == nil && n > 0 {
		d.def.data = append(d.def.data, data...)
	}
	return n, true, err
}

// Build builds a deferred document's Automerge document now (see
// NewDeferred), and does nothing for any other. It fails with an
// [ErrCorrupt] if the changes the document took in do not load, which
// would be a defect in Import's checks: a caller that hands the document
// on to code expecting a whole document calls Build first, to get that as
// an error rather than a panic. The document stays deferred then.
func (d *Doc) Build() error {
	if d.def == nil {
		return nil
	}
	def := d.def
	am := automerge.New()
	heads := def.led.headList()
	var err error
	if def.actor != "" {
		err = am.SetActorID(def.actor)
	}
	if err == nil {
		err = loadRaw(am, def.data)
	}
	if err == nil {
		err = sameHeads(am, heads)
	}
	if err != nil {
		freeAM(am)
		return fmt.Errorf("%w: changes checked without a document do not load: %v", ErrCorrupt, err)
	}
	d.am, d.def = am, nil
	d.idx.Store(&opIndex{top: def.led.top, at: heads})
	d.seqs = make(map[string]actorSeqs, def.led.seqs.len())
	def.led.seqs.each(func(a string, n uint64) {
		d.seqs[a] = actorSeqs{count: n, max: n} // numbered with no gap
	})
	d.seqsAt = heads
	d.jn.restart(heads)
	return nil
}

// SavedSize returns the size of d saved whole (len of [Doc.Save]) without
// building a deferred document: a deferred one is loaded into a
// temporary Automerge document, saved and freed, and keeps its saved form
// as the bytes it builds from (one document chunk, which loads faster
// than a snapshot and the changes after it). It costs what Load and Save
// cost, in time proportional to the document's history; the imports
// after it stay as cheap as before. A built document is saved.
func (d *Doc) SavedSize() (int, error) {
	if d.def == nil {
		return len(d.live().Save()), nil
	}
	def := d.def
	am := automerge.New()
	defer freeAM(am)
	err := loadRaw(am, def.data)
	if err == nil {
		err = sameHeads(am, def.led.headList())
	}
	if err != nil {
		return 0, fmt.Errorf("%w: changes checked without a document do not load: %v", ErrCorrupt, err)
	}
	saved := am.Save()
	def.data = saved
	return len(saved), nil
}

// sameHeads checks that am, built from a deferred document's bytes, is
// at the heads its ledger checked.
func sameHeads(am *automerge.Doc, heads Heads) error {
	got := make(Heads, 0, len(heads))
	for _, h := range am.Heads() {
		got = append(got, Hash(h))
	}
	if !sortedHeads(got).Equal(heads) {
		return fmt.Errorf("heads %v, checked %v", sortedHeads(got), heads)
	}
	return nil
}

func loadRaw(am *automerge.Doc, data []byte) (err error) {
	defer recoverCorrupt(&err)
	if len(data) == 0 {
		return nil
	}
	return am.LoadIncremental(data)
}
