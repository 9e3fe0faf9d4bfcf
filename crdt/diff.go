package crdt

import (
	"fmt"
	"slices"

	"github.com/automerge/automerge-go"
)

// FieldChange is a field one side changed since the base.
type FieldChange struct {
	Path Path
	Old  any // the base value (nil if the field was absent)
	New  any // nil if Removed
	// Removed is true when the side deleted the field.
	Removed bool
}

// Conflict is a field both sides changed since the base to different values
// (Automerge's concurrent puts to one map key), or, with Path nil, a record
// deleted on one side and edited on the other. Values keep their kind: a
// collaborative text reads as [Text] and a counter as [Counter], so that a
// resolution written back stays collaborative.
type Conflict struct {
	Path   Path
	Base   any
	Local  any
	Remote any
	// The *Set flags tell a field that is absent (deleted, or never written)
	// from one that holds nil.
	BaseSet, LocalSet, RemoteSet bool
}

// IsDelete reports whether the conflict is a delete racing an edit, for the
// whole record. Then Base, Local and Remote are the record's fields (nil for
// the side that deleted).
func (c Conflict) IsDelete() bool { return c.Path == nil }

// FieldDiff is the three-way comparison of one record.
type FieldDiff struct {
	Local     []FieldChange // changed only locally, or identically on both sides
	Remote    []FieldChange // changed only remotely
	Merged    []Path        // edited on both sides, merged by the CRDT (lists, text, counters)
	Conflicts []Conflict
	// LocalDeleted and RemoteDeleted report a side that turned the record
	// into a tombstone since the base.
	LocalDeleted, RemoteDeleted bool
}

// Diff3 compares base (the version both sides last shared), local and remote
// field by field, recursing into nested maps that all three hold. A field
// both sides assigned to different values is a conflict. Lists, text and
// counters that all three hold merge by CRDT rules and are reported in
// Merged, not as conflicts. A record deleted on one side and changed on the
// other is a conflict with a nil Path. Results are sorted by path.
func Diff3(base, local, remote *Doc) (*FieldDiff, error) {
	var ss [3]Snapshot
	for i, d := range []*Doc{base, local, remote} {
		var err error
		if ss[i], err = d.Snapshot(); err != nil {
			return nil, err
		}
	}
	return Diff3Snapshots(ss[0], ss[1], ss[2]), nil
}

// Snapshot is a record's fields and deleted status at one moment, with
// kinds kept (Text, Counter), for Diff3Snapshots. Taking one costs a read
// of the fields, where a Fork replays history.
type Snapshot struct {
	fields  map[string]any
	deleted bool
}

// Snapshot reads the document's current fields and deleted status.
func (d *Doc) Snapshot() (Snapshot, error) {
	if s, ok := snapshotRead(d.live(), nil); ok {
		return s, nil
	}
	return snapshotSlow(d.live())
}

// snapshotRead reads a snapshot of am at heads (none: its current
// version) in one call into Automerge (packedRead); ok is false if that
// read failed.
func snapshotRead(am *automerge.Doc, heads Heads) (Snapshot, bool) {
	p, deleted, ok := packedRead(am, heads)
	if !ok {
		return Snapshot{}, false
	}
	f, err := UnpackFields(p, true)
	if err != nil {
		return Snapshot{}, false
	}
	return Snapshot{fields: f, deleted: deleted}, true
}

// snapshotSlow is Snapshot through automerge-go, value by value.
func snapshotSlow(am *automerge.Doc) (Snapshot, error) {
	// One read of the root: the tombstone is one of its keys, which
	// Deleted would read again.
	v, err := fromAM(am.Root(), true)
	if err != nil {
		return Snapshot{}, fmt.Errorf("crdt: snapshot: %w", err)
	}
	f, _ := v.(map[string]any)
	if f == nil {
		f = map[string]any{}
	}
	dead, _ := f[TombstoneKey].(bool)
	delete(f, TombstoneKey)
	return Snapshot{fields: f, deleted: dead}, nil
}

// SnapshotAt reads the document's fields and deleted status as of heads,
// a version it holds (none: the empty document). Automerge reads them at
// heads without copying the document; should that read fail, it replays
// the history up to heads into a copy, as [Doc.Fork] does, and reads that.
func (d *Doc) SnapshotAt(heads Heads) (Snapshot, error) {
	if len(heads) == 0 {
		return Snapshot{fields: map[string]any{}}, nil
	}
	if err := d.hasAll(heads); err != nil {
		return Snapshot{}, err
	}
	if s, ok := snapshotRead(d.live(), heads); ok {
		return s, nil
	}
	return d.snapshotAtSlow(heads)
}

// snapshotAtSlow is SnapshotAt by a fork: the history up to heads
// replayed into a copy that is only read and then freed.
func (d *Doc) snapshotAtSlow(heads Heads) (Snapshot, error) {
	am, err := d.live().Fork(amHashes(heads)...)
	if err != nil {
		return Snapshot{}, fmt.Errorf("crdt: fork: %w", err)
	}
	defer freeAM(am)
	return snapshotSlow(am)
}

// Fields returns the snapshot's fields, with kinds kept as
// [Doc.TypedFields] keeps them, or nil if the record is deleted. The map is
// a copy.
func (s Snapshot) Fields() map[string]any {
	if s.deleted {
		return nil
	}
	m, _ := clone(s.fields).(map[string]any)
	return m
}

// Deleted reports whether the record was a tombstone.
func (s Snapshot) Deleted() bool { return s.deleted }

// Diff3Snapshots is Diff3 over snapshots taken earlier.
func Diff3Snapshots(base, local, remote Snapshot) *FieldDiff {
	snaps := [3]map[string]any{base.fields, local.fields, remote.fields}
	dead := [3]bool{base.deleted, local.deleted, remote.deleted}
	for i := range snaps {
		if snaps[i] == nil {
			snaps[i] = map[string]any{}
		}
	}
	out := &FieldDiff{
		LocalDeleted:  dead[1] && !dead[0],
		RemoteDeleted: dead[2] && !dead[0],
	}
	diffMap(nil, snaps[0], snaps[1], snaps[2], out)

	// A side that deleted the record while the other changed it (or
	// restored it) conflicts as a whole.
	localChanged := len(out.Local) > 0 || len(out.Conflicts) > 0 || len(out.Merged) > 0
	remoteChanged := len(out.Remote) > 0 || len(out.Conflicts) > 0 || len(out.Merged) > 0
	switch {
	case out.LocalDeleted && !dead[2] && (remoteChanged || dead[0]):
		out.Conflicts = []Conflict{{Base: clone(snapOrNil(snaps[0], dead[0])), Local: nil, Remote: clone(snaps[2]), BaseSet: !dead[0], RemoteSet: true}}
	case out.RemoteDeleted && !dead[1] && (localChanged || dead[0]):
		out.Conflicts = []Conflict{{Base: clone(snapOrNil(snaps[0], dead[0])), Local: clone(snaps[1]), Remote: nil, BaseSet: !dead[0], LocalSet: true}}
	}
	sortByPath(out)
	return out
}

func snapOrNil(m map[string]any, dead bool) any {
	if dead {
		return nil
	}
	return m
}

func diffMap(at Path, b, l, r map[string]any, out *FieldDiff) {
	keys := map[string]bool{}
	for _, m := range []map[string]any{b, l, r} {
		for k := range m {
			keys[k] = true
		}
	}
	for k := range keys {
		p := append(slices.Clone(at), k)
		bv, bok := b[k]
		lv, lok := l[k]
		rv, rok := r[k]
		lch := !same(bok, bv, lok, lv)
		rch := !same(bok, bv, rok, rv)
		switch {
		case !lch && !rch:
		case lch && !rch:
			out.Local = append(out.Local, FieldChange{Path: p, Old: bv, New: lv, Removed: !lok})
		case !lch && rch:
			out.Remote = append(out.Remote, FieldChange{Path: p, Old: bv, New: rv, Removed: !rok})
		case same(lok, lv, rok, rv):
			// Both made the same change: nothing to resolve.
			out.Local = append(out.Local, FieldChange{Path: p, Old: bv, New: lv, Removed: !lok})
		case bok && lok && rok && kindOf(bv) == "map" && kindOf(lv) == "map" && kindOf(rv) == "map":
			diffMap(p, bv.(map[string]any), lv.(map[string]any), rv.(map[string]any), out)
		case bok && lok && rok && kindOf(bv) != "scalar" && kindOf(bv) == kindOf(lv) && kindOf(bv) == kindOf(rv):
			out.Merged = append(out.Merged, p)
		default:
			out.Conflicts = append(out.Conflicts, Conflict{
				Path: p, Base: clone(bv), Local: clone(lv), Remote: clone(rv),
				BaseSet: bok, LocalSet: lok, RemoteSet: rok,
			})
		}
	}
}

func same(aok bool, a any, bok bool, b any) bool {
	return aok == bok && (!aok || Equal(a, b) && kindOf(a) == kindOf(b))
}

func sortByPath(d *FieldDiff) {
	cmp := func(a, b Path) int { return slices.Compare(pathKey(a), pathKey(b)) }
	slices.SortFunc(d.Local, func(a, b FieldChange) int { return cmp(a.Path, b.Path) })
	slices.SortFunc(d.Remote, func(a, b FieldChange) int { return cmp(a.Path, b.Path) })
	slices.SortFunc(d.Merged, cmp)
	slices.SortFunc(d.Conflicts, func(a, b Conflict) int { return cmp(a.Path, b.Path) })
}

func pathKey(p Path) []string {
	out := make([]string, len(p))
	for i, e := range p {
		out[i] = fmt.Sprint(e)
	}
	return out
}

// String renders a path as dotted keys, for messages.
func (p Path) String() string {
	s := ""
	for i, e := range p {
		switch x := e.(type) {
		case int:
			s += fmt.Sprintf("[%d]", x)
		default:
			if i > 0 {
				s += "."
			}
			s += fmt.Sprint(x)
		}
	}
	return s
}
