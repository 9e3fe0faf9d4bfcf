package replica

import (
	"errors"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

func TestExportImportKeepsHeads(t *testing.T) {
	src, dst := coll(t, mem(t), "products"), coll(t, mem(t), "products")
	id, err := src.Insert(product{Name: "Tea", Qty: 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, 4) }); err != nil {
		t.Fatal(err)
	}
	doc, heads, err := src.Export(id)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := crdt.Load(doc, ""); err != nil || !d.Heads().Equal(heads) {
		t.Fatalf("exported bytes load with heads %v (%v), want %v", d.Heads(), err, heads)
	}

	if err := dst.Import(id, doc); err != nil {
		t.Fatal(err)
	}
	if got, _ := dst.Heads(id); !got.Equal(heads) {
		t.Fatalf("imported record has heads %v, the sender's are %v", got, heads)
	}
	var p product
	if err := dst.Get(id, &p); err != nil || p.Name != "Tea" || p.Qty != 4 {
		t.Fatalf("imported record: %+v, %v", p, err)
	}
	if n, _ := dst.PendingCount(); n != 0 {
		t.Fatalf("an imported document is pending (%d)", n)
	}

	// Merging a later version of the same document keeps its heads too.
	if err := src.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, 5) }); err != nil {
		t.Fatal(err)
	}
	doc, heads, _ = src.Export(id)
	if err := dst.Import(id, doc); err != nil {
		t.Fatalf("second import: %v", err)
	}
	if got, _ := dst.Heads(id); !got.Equal(heads) {
		t.Fatalf("second import: heads %v, want %v", got, heads)
	}

	// A deleted record exports its tombstone.
	if err := src.Delete(id); err != nil {
		t.Fatal(err)
	}
	doc, _, _ = src.Export(id)
	if d, _ := crdt.Load(doc, ""); !d.Deleted() {
		t.Fatal("exported tombstone does not read as deleted")
	}
}

func TestImportRefusesBadBytes(t *testing.T) {
	c := coll(t, mem(t), "products")
	d, _ := crdt.New("aa")
	d.Set(crdt.Path{"name"}, "x")
	d.Commit("", time.Time{})
	changes, _ := d.ChangesSince(nil)
	saved := d.Save()
	for name, b := range map[string][]byte{
		"truncated": saved[:len(saved)-3],
		"garbage":   []byte("not automerge"),
	} {
		if err := c.Import("r1", b); !errors.Is(err, crdt.ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
	// Bare changes load as a document too (Automerge's load takes them):
	// they are accepted.
	if err := c.Import("r2", changes); err != nil {
		t.Errorf("changes: %v", err)
	}
	if err := c.Get("r1", &map[string]any{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused import wrote the record: %v", err)
	}
	if _, _, err := c.Export("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("export of a missing record: %v", err)
	}
}
