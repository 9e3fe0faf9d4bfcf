package crdt

import (
	"fmt"
	"reflect"

	"github.com/automerge/automerge-go"
)

// CheckEncoding checks that every change chunk in data is in Automerge's
// canonical encoding (the document-independent half of Import's checks).
func CheckEncoding(data []byte) error {
	ci, err := frame(data)
	if err != nil {
		return err
	}
	for i, p := range ci.payloads {
		if _, err := checkCanonical(p); err != nil {
			return fmt.Errorf("change %s: %w", ci.changes[i].Hash, err)
		}
	}
	return nil
}

// LastChange returns the bytes of the change a Commit just made, without
// ChangesSince's walk of the history (benchmarks make thousands).
func LastChange(d *Doc) []byte {
	h := d.am.Heads()
	c, err := d.am.Change(automerge.ChangeHash(h[0]))
	if err != nil {
		panic(err)
	}
	return c.Save()
}

// ChunkPayload returns a change chunk's payload.
var ChunkPayload = chunkPayload

// FreeLayoutErr says why Free cannot release automerge's memory (nil: it
// can).
func FreeLayoutErr() error { return amLayoutErr }

// SlowChangesSince is ChangesSince asking automerge-go alone, as it did
// before the journal: the reference the journal is checked against.
func SlowChangesSince(d *Doc, since Heads) ([]byte, error) {
	if err := d.hasAll(since); err != nil {
		return nil, err
	}
	chs, err := d.am.Changes(amHashes(since)...)
	if err != nil || len(chs) == 0 {
		return nil, err
	}
	return automerge.SaveChanges(chs), nil
}

// JournalLen returns how many changes d's journal holds.
func JournalLen(d *Doc) int {
	d.syncJournal(d.Heads())
	return len(d.jn.entries)
}

// SetJournalLimit sets how many changes d's journal keeps (0: the
// default).
func SetJournalLimit(d *Doc, n int) { d.jn.limit = n }

// Lookups returns how many changes d looked up in automerge-go one by one
// to export or index them.
func Lookups(d *Doc) int { return d.lookups }

// HasLookups returns how many times Has asked automerge-go.
func HasLookups(d *Doc) int { return d.hasLookups }

// HistoryWalks returns how many times d asked automerge-go for the
// changes since heads (a walk of the whole history).
func HistoryWalks(d *Doc) int { return d.historyWalks }

// CheckIndexes checks that d's operation and sequence indexes, brought up
// to date incrementally, equal indexes built afresh from the whole
// history.
func CheckIndexes(d *Doc) error {
	x, err := d.index()
	if err != nil {
		return err
	}
	seqs, err := d.seqIndex()
	if err != nil {
		return err
	}
	chs, err := d.am.Changes()
	if err != nil {
		return err
	}
	fresh := newLayer(nil)
	freshSeqs := map[string]actorSeqs{}
	for _, ch := range chs {
		c, err := decodeChange(chunkPayload(ch.Save()))
		if err != nil {
			return err
		}
		fresh.add(c)
		s := freshSeqs[ch.ActorID()]
		s.count++
		s.max = max(s.max, ch.ActorSeq())
		freshSeqs[ch.ActorID()] = s
	}
	if !x.at.Equal(d.Heads()) {
		return fmt.Errorf("index at %v, document at %v", x.at, d.Heads())
	}
	// The changes left unread count as read: they are read, as a layer
	// over the others, once an import names their authors.
	top := x.top
	if len(x.unread) > 0 {
		top = newLayer(x.top)
		for _, u := range x.unread {
			if a, ok := payloadActor(u.payload); !ok || a != u.actor {
				return fmt.Errorf("unread change %s by %x, its payload says %x", u.hash, u.actor, a)
			}
			c, err := decodeChange(u.payload)
			if err != nil {
				return err
			}
			for i := range c.ops {
				if _, ok := x.top.get(opRef{string(c.actor), c.startOp + uint64(i)}); ok {
					return fmt.Errorf("unread change %s holds operations the index holds", u.hash)
				}
			}
			top.add(c)
		}
	}
	ops, maxOp := map[opRef]opRec{}, map[string]uint64{}
	for l := top; l != nil; l = l.parent {
		l.each(func(k opRef, v opRec) {
			if _, ok := ops[k]; !ok {
				ops[k] = v
			}
		})
		for k, v := range l.maxOp {
			if _, ok := maxOp[k]; !ok {
				maxOp[k] = v
			}
		}
	}
	if !reflect.DeepEqual(ops, fresh.ops) {
		return fmt.Errorf("operation index holds %d operations, the history %d", len(ops), len(fresh.ops))
	}
	if !reflect.DeepEqual(maxOp, fresh.maxOp) {
		return fmt.Errorf("operation index's counters %v, the history's %v", maxOp, fresh.maxOp)
	}
	if !reflect.DeepEqual(seqs, freshSeqs) {
		return fmt.Errorf("sequence index %v, the history's %v", seqs, freshSeqs)
	}
	return nil
}

// BuildIndex indexes d's operations, every change read, as d's first
// Import does when it refers to every actor.
func BuildIndex(d *Doc) error {
	_, err := d.fullIndex(d.Heads())
	return err
}

// UnreadChanges returns how many of d's changes its operation index has
// left unread.
func UnreadChanges(d *Doc) int {
	if x := d.idx.Load(); x != nil {
		return len(x.unread)
	}
	return 0
}

// IndexedOps returns how many operations d's index holds.
func IndexedOps(d *Doc) int {
	n := 0
	if x := d.idx.Load(); x != nil {
		for l := x.top; l != nil; l = l.parent {
			n += l.count()
		}
	}
	return n
}

// JournalAnswer tells how ChangesSince(since) will be answered: "mark" (a
// version d had, from the journal), "walk" (from the journal, walking
// back from since) or "" (by automerge-go). since must be held by d.
func JournalAnswer(d *Doc, since Heads) string {
	if len(since) == 0 {
		return ""
	}
	d.syncJournal(d.Heads())
	if d.jn.isMark(since) {
		return "mark"
	}
	if _, ok := d.jn.since(since); ok {
		return "walk"
	}
	return ""
}

// EmptyChanges returns which of the changes in data have no operations.
func EmptyChanges(data []byte) (map[Hash]bool, error) {
	ci, err := frame(data)
	if err != nil {
		return nil, err
	}
	out := map[Hash]bool{}
	for i, p := range ci.payloads {
		c, err := decodeChange(p)
		if err != nil {
			return nil, err
		}
		out[ci.changes[i].Hash] = len(c.ops) == 0
	}
	return out, nil
}

// MemSize is Doc.memSize, for benchmarks outside the package.
func MemSize(d *Doc) int { return d.memSize() }

// BudgetLeft is InflateBudget.remaining, for tests outside the package.
func BudgetLeft(b *InflateBudget) int64 { return b.remaining() }

// Ledger is the Go-only check of changes (ledger.go), for its tests and
// benchmarks.
type Ledger = ledger

// NewLedger returns the ledger of an empty record.
func NewLedger() *Ledger { return newLedger() }

// LedgerOf returns the ledger of d's history.
func LedgerOf(d *Doc) (*Ledger, error) { return ledgerOf(d) }

// Check is ledger.check.
func (l *ledger) Check(data []byte) (int, error) { return l.check(data) }

// Heads is ledger.headList.
func (l *ledger) Heads() Heads { return l.headList() }

// SpoilDeferred replaces the bytes a deferred document will build from,
// as a defect in the checks that let them in would: for tests of Build's
// failure.
func SpoilDeferred(d *Doc, data []byte) { d.def.data = data }

// CountMismatch returns an error if payload decodes as a change and
// countChange counts it differently from the decoded operations.
func CountMismatch(payload []byte) error {
	c, err := decodeChange(payload)
	if err != nil {
		return nil
	}
	var want held
	want.count(c)
	got, deps, err := countChange(payload)
	if err != nil {
		return fmt.Errorf("counting a change that decodes: %w", err)
	}
	if got != want || deps != len(c.deps) {
		return fmt.Errorf("counted %+v and %d dependencies, decoded %+v and %d", got, deps, want, len(c.deps))
	}
	return nil
}

// SlowPackedFields is PackedFields read through automerge-go value by
// value, as it was read before packedRead.
func SlowPackedFields(d *Doc) ([]byte, error) { return d.packedSlow() }

// SlowSnapshot is Snapshot read through automerge-go.
func SlowSnapshot(d *Doc) (Snapshot, error) { return snapshotSlow(d.live()) }

// SlowSnapshotAt is SnapshotAt read from a fork.
func SlowSnapshotAt(d *Doc, heads Heads) (Snapshot, error) { return d.snapshotAtSlow(heads) }

// ValueBytesPerOp is the bytes of values that count as one operation
// against a document's operation limit.
const ValueBytesPerOp = valueBytesPerOp
