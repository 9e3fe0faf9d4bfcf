package crdt_test

import (
	"reflect"
	"slices"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// diffFixture returns a base record and two forks of it, local and remote,
// that write as distinct actors.
func diffFixture(t *testing.T) (base, local, remote *crdt.Doc) {
	t.Helper()
	base = newDoc(t, actorA)
	if err := base.Put(map[string]any{
		"name":    "lamp",
		"price":   10.0,
		"qty":     1,
		"address": map[string]any{"city": "Oslo", "zip": "0150"},
		"tags":    []string{"home"},
		"body":    crdt.Text("bright"),
		"stock":   crdt.Counter(5),
	}); err != nil {
		t.Fatal(err)
	}
	commit(t, base)
	return base, fork(t, base, actorB), fork(t, base, actorC)
}

func diff3(t *testing.T, base, local, remote *crdt.Doc) *crdt.FieldDiff {
	t.Helper()
	for _, d := range []*crdt.Doc{local, remote} {
		if _, err := d.Commit("", epoch); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := crdt.Diff3(base, local, remote)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func paths[T any](xs []T, path func(T) crdt.Path) []string {
	var out []string
	for _, x := range xs {
		out = append(out, path(x).String())
	}
	return out
}

func changePaths(cs []crdt.FieldChange) []string {
	return paths(cs, func(c crdt.FieldChange) crdt.Path { return c.Path })
}

func conflictPaths(cs []crdt.Conflict) []string {
	return paths(cs, func(c crdt.Conflict) crdt.Path { return c.Path })
}

func mergedPaths(ps []crdt.Path) []string {
	return paths(ps, func(p crdt.Path) crdt.Path { return p })
}

func TestDiff3NoChanges(t *testing.T) {
	base, local, remote := diffFixture(t)
	fd := diff3(t, base, local, remote)
	if !reflect.DeepEqual(*fd, crdt.FieldDiff{}) {
		t.Fatalf("diff of identical forks: %+v", fd)
	}
}

func TestDiff3OneSided(t *testing.T) {
	base, local, remote := diffFixture(t)
	set(t, local, crdt.Path{"name"}, "desk lamp")
	if err := local.Delete(crdt.Path{"qty"}); err != nil {
		t.Fatal(err)
	}
	set(t, remote, crdt.Path{"price"}, 12.5)
	set(t, remote, crdt.Path{"color"}, "red")
	fd := diff3(t, base, local, remote)
	wantLocal := []crdt.FieldChange{
		{Path: crdt.Path{"name"}, Old: "lamp", New: "desk lamp"},
		{Path: crdt.Path{"qty"}, Old: int64(1), Removed: true},
	}
	wantRemote := []crdt.FieldChange{
		{Path: crdt.Path{"color"}, New: "red"},
		{Path: crdt.Path{"price"}, Old: 10.0, New: 12.5},
	}
	if !reflect.DeepEqual(fd.Local, wantLocal) {
		t.Errorf("Local = %#v\nwant %#v", fd.Local, wantLocal)
	}
	if !reflect.DeepEqual(fd.Remote, wantRemote) {
		t.Errorf("Remote = %#v\nwant %#v", fd.Remote, wantRemote)
	}
	if len(fd.Conflicts) != 0 || len(fd.Merged) != 0 {
		t.Errorf("Conflicts %v, Merged %v; want none", fd.Conflicts, fd.Merged)
	}
}

func TestDiff3SameChangeBothSides(t *testing.T) {
	base, local, remote := diffFixture(t)
	for _, d := range []*crdt.Doc{local, remote} {
		set(t, d, crdt.Path{"name"}, "desk lamp")
		if err := d.Delete(crdt.Path{"qty"}); err != nil {
			t.Fatal(err)
		}
	}
	fd := diff3(t, base, local, remote)
	if len(fd.Conflicts) != 0 {
		t.Fatalf("identical edits conflict: %+v", fd.Conflicts)
	}
	if got := changePaths(fd.Local); !slices.Equal(got, []string{"name", "qty"}) {
		t.Errorf("Local = %v", got)
	}
	if len(fd.Remote) != 0 {
		t.Errorf("Remote = %v; identical edits are reported once, as local", fd.Remote)
	}
}

func TestDiff3ScalarConflict(t *testing.T) {
	base, local, remote := diffFixture(t)
	set(t, local, crdt.Path{"price"}, 11.0)
	set(t, remote, crdt.Path{"price"}, 12.0)
	fd := diff3(t, base, local, remote)
	want := []crdt.Conflict{{
		Path: crdt.Path{"price"}, Base: 10.0, Local: 11.0, Remote: 12.0,
		BaseSet: true, LocalSet: true, RemoteSet: true,
	}}
	if !reflect.DeepEqual(fd.Conflicts, want) {
		t.Fatalf("Conflicts = %#v\nwant %#v", fd.Conflicts, want)
	}
	if fd.Conflicts[0].IsDelete() {
		t.Error("a field conflict reads as a record delete")
	}
	// A type change counts: 1 (int) and 1.0 (float) are different values.
	base2, l2, r2 := diffFixture(t)
	set(t, l2, crdt.Path{"qty"}, 2)
	set(t, r2, crdt.Path{"qty"}, 2.0)
	if fd := diff3(t, base2, l2, r2); len(fd.Conflicts) != 1 {
		t.Errorf("int vs float: %+v", fd)
	}
}

func TestDiff3DeleteVsChange(t *testing.T) {
	base, local, remote := diffFixture(t)
	if err := local.Delete(crdt.Path{"price"}); err != nil {
		t.Fatal(err)
	}
	set(t, remote, crdt.Path{"price"}, 12.0)
	// And the other way round, on a nested field.
	set(t, local, crdt.Path{"address", "zip"}, "5003")
	if err := remote.Delete(crdt.Path{"address", "zip"}); err != nil {
		t.Fatal(err)
	}
	fd := diff3(t, base, local, remote)
	want := []crdt.Conflict{
		{Path: crdt.Path{"address", "zip"}, Base: "0150", Local: "5003", BaseSet: true, LocalSet: true},
		{Path: crdt.Path{"price"}, Base: 10.0, Remote: 12.0, BaseSet: true, RemoteSet: true},
	}
	if !reflect.DeepEqual(fd.Conflicts, want) {
		t.Fatalf("Conflicts = %#v\nwant %#v", fd.Conflicts, want)
	}
}

func TestDiff3Nested(t *testing.T) {
	base, local, remote := diffFixture(t)
	set(t, local, crdt.Path{"address", "city"}, "Bergen")
	set(t, remote, crdt.Path{"address", "city"}, "Trondheim")
	set(t, local, crdt.Path{"address", "street"}, "Main st")
	set(t, remote, crdt.Path{"address", "zip"}, "7010")
	fd := diff3(t, base, local, remote)
	want := []crdt.Conflict{{
		Path: crdt.Path{"address", "city"}, Base: "Oslo", Local: "Bergen", Remote: "Trondheim",
		BaseSet: true, LocalSet: true, RemoteSet: true,
	}}
	if !reflect.DeepEqual(fd.Conflicts, want) {
		t.Fatalf("Conflicts = %#v\nwant %#v", fd.Conflicts, want)
	}
	if got := changePaths(fd.Local); !slices.Equal(got, []string{"address.street"}) {
		t.Errorf("Local = %v", got)
	}
	if got := changePaths(fd.Remote); !slices.Equal(got, []string{"address.zip"}) {
		t.Errorf("Remote = %v", got)
	}
}

// Lists, text and counters that both sides edited merge by CRDT rules:
// reported in Merged, not as conflicts; and the merge keeps both edits.
func TestDiff3MergeableKinds(t *testing.T) {
	base, local, remote := diffFixture(t)
	if err := local.InsertAt(crdt.Path{"tags"}, 0, "sale"); err != nil {
		t.Fatal(err)
	}
	if err := remote.InsertAt(crdt.Path{"tags"}, 1, "light"); err != nil {
		t.Fatal(err)
	}
	if err := local.SpliceText(crdt.Path{"body"}, 0, 1, "B"); err != nil {
		t.Fatal(err)
	}
	if err := remote.SpliceText(crdt.Path{"body"}, 6, 0, "er"); err != nil {
		t.Fatal(err)
	}
	if err := local.Increment(crdt.Path{"stock"}, 1); err != nil {
		t.Fatal(err)
	}
	if err := remote.Increment(crdt.Path{"stock"}, -3); err != nil {
		t.Fatal(err)
	}
	fd := diff3(t, base, local, remote)
	if len(fd.Conflicts) != 0 {
		t.Fatalf("Conflicts = %#v", fd.Conflicts)
	}
	if got := mergedPaths(fd.Merged); !slices.Equal(got, []string{"body", "stock", "tags"}) {
		t.Fatalf("Merged = %v", got)
	}
	exchange(t, local, remote)
	got := fields(t, local)
	if got["body"] != "Brighter" || got["stock"] != int64(3) || !reflect.DeepEqual(got["tags"], []any{"sale", "home", "light"}) {
		t.Fatalf("merged record: %v", got)
	}
}

func TestDiff3FreshKeyBothSides(t *testing.T) {
	base, local, remote := diffFixture(t)
	set(t, local, crdt.Path{"meta"}, map[string]any{"by": "ann"})
	set(t, remote, crdt.Path{"meta"}, map[string]any{"by": "bob"})
	set(t, local, crdt.Path{"same"}, map[string]any{"k": 1})
	set(t, remote, crdt.Path{"same"}, map[string]any{"k": 1})
	fd := diff3(t, base, local, remote)
	want := []crdt.Conflict{{
		Path:  crdt.Path{"meta"},
		Local: map[string]any{"by": "ann"}, Remote: map[string]any{"by": "bob"},
		LocalSet: true, RemoteSet: true,
	}}
	if !reflect.DeepEqual(fd.Conflicts, want) {
		t.Fatalf("Conflicts = %#v\nwant %#v", fd.Conflicts, want)
	}
	// Two fresh lists or texts are distinct objects: Automerge keeps one.
	base2, l2, r2 := diffFixture(t)
	set(t, l2, crdt.Path{"notes"}, crdt.Text("a"))
	set(t, r2, crdt.Path{"notes"}, crdt.Text("b"))
	if fd := diff3(t, base2, l2, r2); !slices.Equal(conflictPaths(fd.Conflicts), []string{"notes"}) {
		t.Fatalf("fresh texts: %+v", fd)
	}
}

func TestDiff3RecordDeleteVsUpdate(t *testing.T) {
	base, local, remote := diffFixture(t)
	if err := local.SetDeleted(true); err != nil {
		t.Fatal(err)
	}
	set(t, remote, crdt.Path{"name"}, "desk lamp")
	fd := diff3(t, base, local, remote)
	if !fd.LocalDeleted || fd.RemoteDeleted {
		t.Fatalf("LocalDeleted %v RemoteDeleted %v", fd.LocalDeleted, fd.RemoteDeleted)
	}
	if len(fd.Conflicts) != 1 || !fd.Conflicts[0].IsDelete() {
		t.Fatalf("Conflicts = %#v; want one record conflict", fd.Conflicts)
	}
	c := fd.Conflicts[0]
	if c.Local != nil || c.LocalSet || !c.RemoteSet || !c.BaseSet {
		t.Fatalf("record conflict %#v", c)
	}
	if rm, ok := c.Remote.(map[string]any); !ok || rm["name"] != "desk lamp" {
		t.Fatalf("Remote = %#v, want the remote fields", c.Remote)
	}
	if bm, ok := c.Base.(map[string]any); !ok || bm["name"] != "lamp" {
		t.Fatalf("Base = %#v, want the base fields", c.Base)
	}

	// Mirrored: deleted remotely, edited locally.
	base, local, remote = diffFixture(t)
	set(t, local, crdt.Path{"price"}, 1.0)
	if err := remote.SetDeleted(true); err != nil {
		t.Fatal(err)
	}
	fd = diff3(t, base, local, remote)
	if len(fd.Conflicts) != 1 || !fd.Conflicts[0].IsDelete() || fd.Conflicts[0].Remote != nil ||
		fd.Conflicts[0].RemoteSet || !fd.Conflicts[0].LocalSet || !fd.RemoteDeleted {
		t.Fatalf("remote delete vs local edit: %#v", fd)
	}

	// A delete with no edit on the other side is no conflict.
	base, local, remote = diffFixture(t)
	if err := remote.SetDeleted(true); err != nil {
		t.Fatal(err)
	}
	fd = diff3(t, base, local, remote)
	if len(fd.Conflicts) != 0 || !fd.RemoteDeleted {
		t.Fatalf("delete alone: %#v", fd)
	}
}

func TestDiff3BothDeleted(t *testing.T) {
	base, local, remote := diffFixture(t)
	for _, d := range []*crdt.Doc{local, remote} {
		if err := d.SetDeleted(true); err != nil {
			t.Fatal(err)
		}
	}
	fd := diff3(t, base, local, remote)
	if len(fd.Conflicts) != 0 || !fd.LocalDeleted || !fd.RemoteDeleted {
		t.Fatalf("both deleted: %#v", fd)
	}
}

func TestDiff3Sorted(t *testing.T) {
	base, local, remote := diffFixture(t)
	for _, k := range []string{"z", "b", "y", "a", "m"} {
		set(t, local, crdt.Path{k}, "l"+k)
		set(t, remote, crdt.Path{k}, "r"+k)
		set(t, local, crdt.Path{"local", k}, 1)
		set(t, remote, crdt.Path{"remote_" + k}, 1)
	}
	set(t, local, crdt.Path{"address", "city"}, "x")
	set(t, remote, crdt.Path{"address", "city"}, "y")
	fd := diff3(t, base, local, remote)
	want := []string{"a", "address.city", "b", "m", "y", "z"}
	if got := conflictPaths(fd.Conflicts); !slices.Equal(got, want) {
		t.Errorf("conflicts %v, want %v", got, want)
	}
	for name, ps := range map[string][]string{"local": changePaths(fd.Local), "remote": changePaths(fd.Remote)} {
		if !slices.IsSorted(ps) || len(ps) == 0 {
			t.Errorf("%s changes not sorted: %v", name, ps)
		}
	}
}
