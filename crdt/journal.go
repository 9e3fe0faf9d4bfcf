package crdt

import (
	"cmp"
	"encoding/binary"
	"slices"

	"github.com/automerge/automerge-go"
)

// automerge-go's Changes(since) (AMgetChanges) costs time in proportion to
// the whole history, however few changes it returns: Automerge builds a
// vector clock for since by walking every ancestor of since in its change
// graph. Looking a change up by its hash (AMgetChangeByHash) is a hash-map
// lookup. So a Doc keeps a journal of the changes it has added since a
// version it knows, and answers "changes since" from it, one lookup per
// change, whenever since is a version the journal covers: in Ferry nearly
// always, as callers ask for the changes since heads the Doc itself had a
// little earlier (the replica's stored heads, the relay's heads before a
// push, the heads an index was last brought up to).
//
// The journal checks itself rather than trusting every path that changes
// the document to report to it. A document holds exactly its heads and
// their ancestors, so the journal describes the document while the
// document's heads are the journal's tip: its changes are then those of
// base (and their ancestors) plus the entries. A change the journal did
// not see moves the heads. Commits, including those automerge-go makes
// on its own when a method reads the history, are found by walking back
// from the new heads, one lookup per change, to the tip; any other
// difference (a rollback, a Load, a fork) restarts the journal at the
// document's heads, and "changes since" asks Automerge until the journal
// covers it again.
//
// An entry also keeps its change's payload (the change chunk's bytes after
// its header), taken from the bytes Import checked or from the commit the
// journal walked: "changes since" then rebuilds the chunks from them, and
// the operation index decodes them, with no call into Automerge at all. A
// lookup by hash is a call into Rust that copies the change out, and a
// sync asks for the same recent changes several times (to index them, to
// store them, to push them). The payloads are bounded by maxJournalBytes;
// an entry past it keeps none and is looked up as before.

// maxJournal bounds the entries a journal keeps; past it the older half
// is dropped.
const maxJournal = 256

// maxCommitWalk bounds how many unseen commits syncJournal walks back
// through before it restarts the journal instead.
const maxCommitWalk = 64

// maxJournalBytes bounds the bytes of payloads a journal keeps.
const maxJournalBytes = 16 << 10

// journal is a Doc's record of the changes it added since base, in the
// order Automerge applied them (a causal order).
type journal struct {
	started bool
	limit   int   // entries kept (0: maxJournal)
	base    Heads // heads before entries[0]
	tip     Heads // heads after the last entry
	entries []jentry
	bytes   int // of the entries' payloads
	first   int // position of entries[0] in the journal's whole life
	// marks maps the versions the document had between entries (their
	// heads, as markKey) to the position after them, so "changes since"
	// a version the document had is a slice of entries.
	marks map[string]int
}

// jentry is one change in a journal.
type jentry struct {
	hash Hash
	deps Heads // sorted
	// payload is the change's payload, if the journal keeps it (its own
	// copy: see journalImported).
	payload []byte
}

// markKey is the key of heads in journal.marks (sorted, without repeats).
func markKey(h Heads) string {
	h = sortedHeads(h) // h itself, if sorted already: not to be changed
	b := make([]byte, 0, len(h)*HashSize)
	for i, x := range h {
		if i == 0 || x != h[i-1] {
			b = append(b, x[:]...)
		}
	}
	return string(b)
}

// restart empties the journal, which then describes a document whose
// heads are heads.
func (j *journal) restart(heads Heads) {
	*j = journal{started: true, limit: j.limit, base: heads, tip: heads, marks: map[string]int{markKey(heads): 0}}
}

// forget empties the journal after changes came in that it did not see:
// it starts again at the document's heads when next used.
func (j *journal) forget() {
	*j = journal{limit: j.limit}
}

// add appends changes (in the order they were applied) that took the
// document from the journal's tip to heads. The caller has checked that
// the document's changes are now those of the tip and these.
func (j *journal) add(es []jentry, heads Heads) {
	n := len(j.entries)
	j.entries = append(j.entries, es...)
	for i := n; i < len(j.entries); i++ {
		e := &j.entries[i]
		if j.bytes+len(e.payload) > maxJournalBytes {
			e.payload = nil
		}
		j.bytes += len(e.payload)
	}
	j.tip = heads
	j.marks[markKey(heads)] = j.first + len(j.entries)
	if limit := cmp.Or(j.limit, maxJournal); len(j.entries) > limit {
		j.trim()
	}
}

// isMark reports whether the document had the version heads since the
// journal's base.
func (j *journal) isMark(heads Heads) bool {
	_, ok := j.marks[markKey(heads)]
	return ok
}

// trim drops the older half of the entries, starting the journal again
// at the first version the document had after them.
func (j *journal) trim() {
	cut := j.first + len(j.entries)/2
	newFirst, newBase := -1, ""
	for k, p := range j.marks {
		if p >= cut && (newFirst < 0 || p < newFirst) {
			newFirst, newBase = p, k
		}
	}
	for k, p := range j.marks {
		if p < newFirst {
			delete(j.marks, k)
		}
	}
	base := make(Heads, 0, len(newBase)/HashSize)
	for i := 0; i < len(newBase); i += HashSize {
		base = append(base, Hash([]byte(newBase[i:i+HashSize])))
	}
	j.entries = slices.Clone(j.entries[newFirst-j.first:])
	j.first, j.base = newFirst, base
	j.bytes = 0
	for _, e := range j.entries {
		j.bytes += len(e.payload)
	}
}

// since returns the journal's changes that are not ancestors of since,
// in the order they were applied, if the journal can tell: since must be
// a version the document had since base, or heads whose ancestors include
// all of base. The journal must describe the
// document (see syncJournal), and since must hold only changes the
// document holds.
func (j *journal) since(since Heads) ([]jentry, bool) {
	if p, ok := j.marks[markKey(since)]; ok {
		return j.entries[p-j.first:], true
	}
	// Otherwise walk back from since through the entries. A change the
	// walk does not reach is not an ancestor of since; one outside the
	// entries is base or an ancestor of it, and all of those are
	// ancestors of since if each of base is reached (no head is an
	// ancestor of another, so a path to one passes through no other).
	at := make(map[Hash]int, len(j.entries))
	for i, e := range j.entries {
		at[e.hash] = i
	}
	inBase := make(map[Hash]bool, len(j.base))
	for _, b := range j.base {
		inBase[b] = true
	}
	reached := 0
	seen := make([]bool, len(j.entries))
	var stack []int
	visit := func(h Hash) {
		if i, ok := at[h]; ok {
			if !seen[i] {
				seen[i] = true
				stack = append(stack, i)
			}
		} else if inBase[h] {
			inBase[h] = false
			reached++
		}
	}
	for _, h := range since {
		visit(h)
	}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, dep := range j.entries[i].deps {
			visit(dep)
		}
	}
	if reached != len(j.base) {
		return nil, false
	}
	var out []jentry
	for i, e := range j.entries {
		if !seen[i] {
			out = append(out, e)
		}
	}
	return out, true
}

// holds reports whether h is one of the changes the journal has seen (its
// entries, or its base or tip): a document holds every change its journal
// has seen, since whatever takes changes away from a document (a rollback,
// a reset) starts its journal again. Looking there first spares a call
// into Automerge for what a document asks about most: its recent changes
// and its heads.
func (j *journal) holds(h Hash) bool {
	if slices.Contains(j.tip, h) || slices.Contains(j.base, h) {
		return true
	}
	for i := len(j.entries) - 1; i >= 0; i-- {
		if j.entries[i].hash == h {
			return true
		}
	}
	return false
}

// size estimates the bytes the journal holds.
func (j *journal) size() int {
	n := (len(j.base)+len(j.tip))*HashSize + j.bytes
	for _, e := range j.entries {
		n += HashSize + 24 + len(e.deps)*HashSize
	}
	for k := range j.marks {
		n += len(k) + 16 + 8 + 16 // key bytes, string header, value, map slot
	}
	return n
}

// syncJournal brings the journal up to date with the document, whose
// heads are heads, and reports whether it was (or could be brought) up
// to date without starting again.
//
// Changes the journal did not see are commits (Commit, or those
// automerge-go makes on its own when a method reads the history): every
// other way a change enters the document goes through Import, which
// records what it adds, or starts the journal again (a rollback, a sync
// message that carried changes, against SyncState's rules). They are
// found by walking back from heads while the heads are one change. A
// commit depends on the heads before it and, if it is not among them, on
// its author's previous change (an ancestor of those heads, as it is not
// one of them and every change the journal did not see descends from the
// tip). So the walk ends when a commit's dependencies, less its author's
// previous change, are the tip.
func (d *Doc) syncJournal(heads Heads) bool {
	j := &d.jn
	if !j.started {
		j.restart(heads)
		return false
	}
	if heads.Equal(j.tip) {
		return true
	}
	var walk []jentry
	for cur := heads; len(walk) < maxCommitWalk && len(cur) == 1; {
		ch, err := d.live().Change(automerge.ChangeHash(cur[0]))
		if err != nil {
			break
		}
		deps := make(Heads, 0, 1)
		for _, dep := range ch.Dependencies() {
			deps = append(deps, Hash(dep))
		}
		deps = sortedHeads(deps)
		walk = append(walk, jentry{hash: cur[0], deps: deps, payload: chunkPayload(ch.Save())})
		// The heads before the commit: deps, or deps less the author's
		// previous change.
		before := deps
		if len(deps) > 1 && !deps.Equal(j.tip) {
			before = d.withoutPrevious(ch, deps)
		}
		if !before.Equal(j.tip) {
			cur = before
			continue
		}
		// Found the tip: the document's changes are the journal's and
		// the walk's. Each version on the way is one the document had.
		slices.Reverse(walk)
		end := j.first + len(j.entries)
		for i := range walk[:len(walk)-1] {
			j.marks[markKey(Heads{walk[i].hash})] = end + i + 1
		}
		j.add(walk, sortedHeads(heads))
		return true
	}
	j.restart(sortedHeads(heads))
	return false
}

// withoutPrevious returns deps, the dependencies of ch, less ch's
// author's previous change if it is one of them.
func (d *Doc) withoutPrevious(ch *automerge.Change, deps Heads) Heads {
	seq := ch.ActorSeq()
	if seq <= 1 {
		return deps
	}
	actor := ch.ActorID()
	for i, dep := range deps {
		c, err := d.live().Change(automerge.ChangeHash(dep))
		if err == nil && c.ActorSeq() == seq-1 && c.ActorID() == actor {
			return slices.Delete(slices.Clone(deps), i, i+1)
		}
	}
	return deps
}

// changesSince returns the document's changes that are not ancestors of
// since (which the document must hold), in an order Import accepts: from
// the journal when it covers since, else from Automerge. heads are the
// document's.
//
// Automerge's answer may also hold a change that since holds: its vector
// clock places a change by the highest operation counter, which a change
// with no operations shares with the change its author made before it.
// Import ignores such a change, but a count of changes must not rely on
// this answer.
func (d *Doc) changesSince(since, heads Heads) ([]*automerge.Change, error) {
	chs, ok, err := d.journalChanges(since, heads)
	if ok || err != nil {
		return chs, err
	}
	d.historyWalks++
	return d.live().Changes(amHashes(since)...)
}

// journalPayloads is changesSince from the journal alone, as the changes'
// hashes and payloads: ok is false if it does not cover since. Changes
// whose payload the journal does not keep are looked up.
func (d *Doc) journalPayloads(since, heads Heads) (es []jentry, ok bool, err error) {
	if len(since) == 0 {
		return nil, false, nil
	}
	d.syncJournal(heads)
	if es, ok = d.jn.since(since); !ok {
		return nil, false, nil
	}
	var out []jentry
	for i, e := range es {
		if e.payload != nil {
			continue
		}
		if out == nil {
			out = slices.Clone(es) // es may be the journal's own entries
		}
		d.lookups++
		ch, err := d.live().Change(automerge.ChangeHash(e.hash))
		if err != nil {
			return nil, false, err
		}
		out[i].payload = chunkPayload(ch.Save())
	}
	if out == nil {
		out = es
	}
	return out, true, nil
}

// appendChunks appends the change chunks of es (hashes and payloads).
// A change's chunk is its payload behind a header that its hash and
// length determine, as Automerge writes it.
func appendChunks(out []byte, es []jentry) []byte {
	n := 0
	for _, e := range es {
		n += 9 + binary.MaxVarintLen64 + len(e.payload)
	}
	out = slices.Grow(out, n)
	for _, e := range es {
		out = append(out, chunkMagic...)
		out = append(out, e.hash[:4]...)
		out = append(out, chunkChange)
		out = binary.AppendUvarint(out, uint64(len(e.payload)))
		out = append(out, e.payload...)
	}
	return out
}

// journalChanges is changesSince from the journal alone: ok is false if
// it does not cover since.
func (d *Doc) journalChanges(since, heads Heads) (chs []*automerge.Change, ok bool, err error) {
	if len(since) == 0 {
		return nil, false, nil
	}
	d.syncJournal(heads)
	es, ok := d.jn.since(since)
	if !ok {
		return nil, false, nil
	}
	hs := make([]Hash, len(es))
	for i, e := range es {
		hs[i] = e.hash
	}
	chs, err = d.changesByHash(hs)
	return chs, err == nil, err
}

// changesByHash looks changes up one by one.
func (d *Doc) changesByHash(hs []Hash) ([]*automerge.Change, error) {
	d.lookups += len(hs)
	out := make([]*automerge.Change, len(hs))
	for i, h := range hs {
		ch, err := d.live().Change(automerge.ChangeHash(h))
		if err != nil {
			return nil, err
		}
		out[i] = ch
	}
	return out, nil
}
