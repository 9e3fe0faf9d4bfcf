package crdt

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// unreadFixture returns a document of actor bb02 that took a record from
// aa01 and then made three commits of its own, and a fork of it as
// actor cc03 (which holds those commits).
func unreadFixture(t *testing.T) (a, b, c *Doc) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	edit := func(d *Doc, field string, v int64) {
		t.Helper()
		must(d.Set(Path{field}, v))
		_, err := d.Commit("", time.Time{})
		must(err)
	}
	a, err := New("aa01")
	must(err)
	t.Cleanup(a.Free)
	must(a.Put(map[string]any{"x": int64(0), "y": int64(0)}))
	_, err = a.Commit("", time.Time{})
	must(err)
	creation, err := a.ChangesSince(nil)
	must(err)
	b, err = New("bb02")
	must(err)
	t.Cleanup(b.Free)
	_, err = b.Import(creation)
	must(err)
	for i := range 3 {
		edit(b, "x", int64(i+1))
	}
	c, err = b.Fork(nil)
	must(err)
	t.Cleanup(c.Free)
	must(c.SetActor("cc03"))
	edit(a, "y", 7)
	edit(c, "x", 9)
	return a, b, c
}

func unreadCount(d *Doc) int {
	if x := d.idx.Load(); x != nil {
		return len(x.unread)
	}
	return 0
}

// TestImportLeavesOwnCommitsUnread: an import of changes that name only
// other actors does not read the document's own commits into the
// operation index; one whose changes name their author does, and its
// references to them are checked as any others.
func TestImportLeavesOwnCommitsUnread(t *testing.T) {
	a, b, c := unreadFixture(t)
	if _, err := b.Import(LastChange(a)); err != nil {
		t.Fatal(err)
	}
	if n := unreadCount(b); n != 3 {
		t.Fatalf("after a change naming only aa01: %d changes unread, want bb02's 3", n)
	}
	if err := CheckIndexes(b); err != nil {
		t.Fatal(err)
	}
	// cc03's change sets x over bb02's last set: it names bb02.
	if _, err := b.Import(LastChange(c)); err != nil {
		t.Fatal(err)
	}
	if n := unreadCount(b); n != 0 {
		t.Fatalf("after a change naming bb02: %d changes unread, want 0", n)
	}
	if err := CheckIndexes(b); err != nil {
		t.Fatal(err)
	}
	if f, err := b.Fields(); err != nil || f["x"] != int64(9) {
		t.Fatalf("fields %v (%v), want x = 9", f, err)
	}
	if _, err := Load(b.Save(), ""); err != nil {
		t.Fatal(err)
	}
}

// TestImportChecksAgainstUnreadCommits: references to operations of the
// document's unread commits are checked against them: one that names an
// operation they hold is taken, one that names an operation nobody made
// is refused, and a change by their author that reuses their counters is
// refused.
func TestImportChecksAgainstUnreadCommits(t *testing.T) {
	for _, tc := range []struct {
		name, why string
		make      func(t *testing.T, b, c *Doc) []byte
	}{
		{name: "a predecessor bb02 never made", why: "predecessor", make: func(t *testing.T, b, c *Doc) []byte {
			ch, err := decodeChange(chunkPayload(LastChange(c)))
			if err != nil {
				t.Fatal(err)
			}
			return withOps(ch, func(ops []chOp) { ops[0].pred[0].ctr = 999 })
		}},
		{name: "bb02's counters reused", why: "start op", make: func(t *testing.T, b, c *Doc) []byte {
			f, err := b.Fork(nil)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Free()
			if err := f.Set(Path{"y"}, int64(5)); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Commit("", time.Time{}); err != nil {
				t.Fatal(err)
			}
			ch, err := decodeChange(chunkPayload(LastChange(f)))
			if err != nil {
				t.Fatal(err)
			}
			ch.startOp--
			return chunkOf(ch.encodeCanonical())
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b, c := unreadFixture(t)
			if _, err := b.Import(LastChange(a)); err != nil {
				t.Fatal(err)
			}
			if unreadCount(b) != 3 {
				t.Fatal("bb02's commits were read")
			}
			before := b.Heads()
			n, err := b.Import(tc.make(t, b, c))
			if !errors.Is(err, ErrCorrupt) || n != 0 || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("Import = %d, %v; want ErrCorrupt about the %s", n, err, tc.why)
			}
			if !b.Heads().Equal(before) {
				t.Fatal("a refused import changed the document")
			}
			if err := CheckIndexes(b); err != nil {
				t.Fatal(err)
			}
			// The genuine change is taken.
			if _, err := b.Import(LastChange(c)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCostReadsUnreadCommits: Cost counts what the document holds,
// unread changes included.
func TestCostReadsUnreadCommits(t *testing.T) {
	a, b, _ := unreadFixture(t)
	if _, err := b.Import(LastChange(a)); err != nil {
		t.Fatal(err)
	}
	if unreadCount(b) == 0 {
		t.Fatal("nothing unread")
	}
	got, err := b.Cost()
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := Load(b.Save(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Free()
	want, err := fresh.Cost()
	if err != nil {
		t.Fatal(err)
	}
	if got.Changes != want.Changes || got.Ops != want.Ops {
		t.Fatalf("Cost = %d changes, %d operations; a reloaded copy: %d, %d", got.Changes, got.Ops, want.Changes, want.Ops)
	}
}
