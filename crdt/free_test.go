package crdt_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/automerge/automerge-go"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/memtest"
)

// TestFreeLayout fails if automerge-go's types no longer have the layout
// Free reaches into (after an upgrade): Free then leaves documents to
// automerge-go's finalizer, which is safe but holds memory until a
// garbage collection runs it.
func TestFreeLayout(t *testing.T) {
	if err := crdt.FreeLayoutErr(); err != nil {
		t.Fatalf("Free cannot release automerge's memory: %v", err)
	}
}

// failsFreed runs fn on a freed document and checks that it panics with
// ErrFreed.
func failsFreed(t *testing.T, name string, fn func() error) {
	t.Helper()
	defer func() {
		t.Helper()
		if e, ok := recover().(error); !ok || !errors.Is(e, crdt.ErrFreed) {
			t.Errorf("%s on a freed document panicked with %v, want ErrFreed", name, e)
		}
	}()
	err := fn()
	t.Errorf("%s on a freed document returned (error %v), want a panic", name, err)
}

// TestFreedDocFails uses documents freed after each way of making one:
// each use panics with ErrFreed in Go, before automerge's freed memory
// could be touched (a use after free in C would crash the process or
// corrupt what later documents read).
func TestFreedDocFails(t *testing.T) {
	base := newDoc(t, actorA)
	set(t, base, crdt.Path{"name"}, "tea")
	set(t, base, crdt.Path{"notes"}, crdt.Text("hello"))
	commit(t, base)
	saved := base.Save()
	change, err := base.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	heads := base.Heads()

	makers := map[string]func() *crdt.Doc{
		"New":  func() *crdt.Doc { return newDoc(t, actorB) },
		"Load": func() *crdt.Doc { d, err := crdt.Load(saved, actorB); must(t, err); return d },
		"Load with changes": func() *crdt.Doc {
			d, err := crdt.Load(append(append([]byte(nil), saved...), change...), actorB)
			must(t, err)
			return d
		},
		"Fork":       func() *crdt.Doc { d, err := base.Fork(nil); must(t, err); return d },
		"Fork at":    func() *crdt.Doc { d, err := base.Fork(heads); must(t, err); return d },
		"after Save": func() *crdt.Doc { d, err := crdt.Load(saved, ""); must(t, err); _ = d.Save(); return d },
	}
	uses := []struct {
		name string
		fn   func(d *crdt.Doc) error
	}{
		{"Save", func(d *crdt.Doc) error { d.Save(); return nil }},
		{"Heads", func(d *crdt.Doc) error { d.Heads(); return nil }},
		{"Has", func(d *crdt.Doc) error { d.Has(heads[0]); return nil }},
		{"Actor", func(d *crdt.Doc) error { d.Actor(); return nil }},
		{"SetActor", func(d *crdt.Doc) error { return d.SetActor(actorC) }},
		{"Fork", func(d *crdt.Doc) error { _, err := d.Fork(nil); return err }},
		{"ChangesSince", func(d *crdt.Doc) error { _, err := d.ChangesSince(nil); return err }},
		{"Commit", func(d *crdt.Doc) error { _, err := d.Commit("", epoch); return err }},
		{"CommitEmpty", func(d *crdt.Doc) error { return d.CommitEmpty("", epoch) }},
		{"Import", func(d *crdt.Doc) error { _, err := d.Import(change); return err }},
		{"Get", func(d *crdt.Doc) error { _, err := d.Get(crdt.Path{"name"}); return err }},
		{"Lookup", func(d *crdt.Doc) error { _, _, err := d.Lookup(crdt.Path{"name"}); return err }},
		{"Fields", func(d *crdt.Doc) error { _, err := d.Fields(); return err }},
		{"TypedFields", func(d *crdt.Doc) error { _, err := d.TypedFields(); return err }},
		{"Set", func(d *crdt.Doc) error { return d.Set(crdt.Path{"name"}, "x") }},
		{"Delete", func(d *crdt.Doc) error { return d.Delete(crdt.Path{"name"}) }},
		{"Put", func(d *crdt.Doc) error { return d.Put(map[string]any{"name": "x"}) }},
		{"Decode", func(d *crdt.Doc) error { var m map[string]any; return d.Decode(&m) }},
		{"SetDeleted", func(d *crdt.Doc) error { return d.SetDeleted(true) }},
		{"Snapshot", func(d *crdt.Doc) error { _, err := d.Snapshot(); return err }},
		{"SpliceText", func(d *crdt.Doc) error { return d.SpliceText(crdt.Path{"notes"}, 0, 0, "x") }},
		{"Increment", func(d *crdt.Doc) error { return d.Increment(crdt.Path{"n"}, 1) }},
		{"Insert", func(d *crdt.Doc) error { return d.InsertAt(crdt.Path{"l"}, 0, int64(1)) }},
		{"Deleted", func(d *crdt.Doc) error { d.Deleted(); return nil }},
	}
	for name, mk := range makers {
		for _, u := range uses {
			d := mk()
			if d.Freed() {
				t.Fatalf("%s: a new document reports freed", name)
			}
			d.Free()
			if !d.Freed() {
				t.Fatalf("%s: Freed() false after Free", name)
			}
			d.Free() // a second Free does nothing
			failsFreed(t, name+" then "+u.name, func() error { return u.fn(d) })
		}
	}
	// Freeing a fork leaves the original whole, and the other way round.
	f, err := base.Fork(nil)
	must(t, err)
	f.Free()
	if got := get(t, base, "name"); got != "tea" {
		t.Fatalf("original after its fork was freed: name = %v", got)
	}
	g, err := base.Fork(nil)
	must(t, err)
	o, err := crdt.Load(base.Save(), actorA)
	must(t, err)
	o.Free()
	if got := get(t, g, "name"); got != "tea" {
		t.Fatalf("fork after another document was freed: name = %v", got)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestFreeReleasesMemory loads and drops a large document many times with
// the garbage collector off, once freeing each and once not. Resident
// memory is measured, not timed: freed documents give their memory back
// for the next load, so it stays flat; dropped ones hold theirs until a
// collection would run their finalizers.
//
// It measures in a process of its own: documents kept would first reuse
// what the C allocator holds free from the package's earlier tests (or an
// earlier run of this one), which resident memory does not show.
func TestFreeReleasesMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 2 x 40 documents of 2 MB")
	}
	if os.Getenv("FERRY_FREE_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestFreeReleasesMemory$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "FERRY_FREE_CHILD=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		for line := range bytes.Lines(out) {
			if bytes.Contains(line, []byte("GC off")) {
				t.Log(string(bytes.TrimSpace(line)))
			}
		}
		return
	}
	// A record of 3,000 fields: 2 MB in automerge's memory, 10 KB saved.
	d := newDoc(t, actorA)
	for i := range 3000 {
		set(t, d, crdt.Path{fmt.Sprintf("f%04d", i)}, int64(i))
	}
	commit(t, d)
	saved := d.Save()
	d.Free()

	const n, warm = 40, 8
	load := func() *crdt.Doc {
		d, err := crdt.Load(saved, actorB)
		must(t, err)
		return d
	}
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	runtime.GC()
	// The C allocator keeps freed memory for reuse, an arena per thread
	// that called it: let it settle before measuring.
	for range warm {
		load().Free()
	}
	start := memtest.Resident(t)
	for range n {
		load().Free()
	}
	freed := memtest.Resident(t) - start

	start = memtest.Resident(t)
	keep := make([]*crdt.Doc, 0, n) // dropped documents: nothing frees them with the GC off
	for range n {
		keep = append(keep, load())
	}
	dropped := memtest.Resident(t) - start
	perDoc := dropped / n

	// A document made by automerge-go itself, freed with FreeAutomerge.
	for range warm {
		crdt.FreeAutomerge(loadRaw(t, saved))
	}
	start = memtest.Resident(t)
	for range n {
		crdt.FreeAutomerge(loadRaw(t, saved))
	}
	if raw := memtest.Resident(t) - start; raw > 4*perDoc {
		t.Fatalf("with FreeAutomerge, RSS grew %d bytes over %d loads (%d a document unfreed): memory was not released", raw, n, perDoc)
	}
	t.Logf("%d loads of a %d-byte document, GC off: RSS grew %.1f MiB with Free, %.1f MiB without (%.2f MiB a document)",
		n, len(saved), float64(freed)/(1<<20), float64(dropped)/(1<<20), float64(perDoc)/(1<<20))
	// About 2 MiB alone; less when the allocator hands back memory it
	// kept from the package's earlier tests (malloc_trim is off under the
	// race detector). Still far above what Free may leave behind.
	if perDoc < 512<<10 {
		t.Fatalf("a document takes %d bytes in memory: too small to measure against", perDoc)
	}
	// Flat: under a few documents' worth, whatever the allocator keeps.
	if freed > 4*perDoc {
		t.Fatalf("with Free, RSS grew %d bytes over %d loads (%d a document unfreed): memory was not released", freed, n, perDoc)
	}
	for _, d := range keep {
		d.Free()
	}
}

func loadRaw(t *testing.T, saved []byte) *automerge.Doc {
	t.Helper()
	d, err := automerge.Load(saved)
	must(t, err)
	return d
}
