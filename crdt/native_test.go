package crdt_test

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// TestNativeInUse checks that NativeInUse sees what automerge-go holds:
// it grows by documents loaded, and falls once they are freed.
func TestNativeInUse(t *testing.T) {
	if _, ok := crdt.NativeInUse(); !ok {
		t.Skip("the C allocator's use is not known here (not glibc, or the race detector)")
	}
	src := newDoc(t, actorA)
	for i := range 200 {
		set(t, src, crdt.Path{fmt.Sprint("f", i)}, i)
		commit(t, src)
	}
	saved := src.Save()
	src.Free()
	runtime.GC()
	crdt.ReleaseNative()
	before, _ := crdt.NativeInUse()
	docs := make([]*crdt.Doc, 50)
	for i := range docs {
		d, err := crdt.Load(saved, "")
		if err != nil {
			t.Fatal(err)
		}
		docs[i] = d
	}
	loaded, _ := crdt.NativeInUse()
	// Each document holds well over the saved bytes it came from.
	if grew := loaded - before; grew < int64(len(docs)*len(saved)) {
		t.Fatalf("%d documents of %d saved bytes loaded: the C allocator's use grew by %d bytes", len(docs), len(saved), grew)
	}
	for _, d := range docs {
		d.Free()
	}
	runtime.GC()
	freed, _ := crdt.NativeInUse()
	if freed >= loaded || freed-before > (loaded-before)/2 {
		t.Fatalf("in use %d before, %d with the documents loaded, %d once freed", before, loaded, freed)
	}
}
