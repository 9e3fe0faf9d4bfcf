package crdt

// Releasing a document's memory at once.
//
// automerge-go keeps each document in memory allocated by its Rust core,
// owned by the result object of the call that made it (AMcreate, AMload,
// AMfork), and frees it only from a finalizer on that result: memory the
// Go garbage collector cannot see, so it does not hurry to run it. A
// process that loads and drops many documents holds far more memory than
// it uses until some collection happens to run the finalizers.
//
// automerge-go has no way to free a document, so Free does what its
// finalizer would do, reaching the result through the unexported fields of
// automerge.Doc: it clears the finalizer (so the memory is never freed
// twice) and calls AMresultFree, automerge-c's own deallocator, from the
// static library automerge-go links. The field layout it relies on is
// checked against automerge-go's types once, at start-up: if an upgrade
// changed it, Free only drops the document (left to the finalizer, as
// before) and TestFreeLayout fails.

/*
typedef struct AMresult AMresult;
void AMresultFree(AMresult *result);
*/
import "C"

import (
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"sync"
	"unsafe"

	"github.com/automerge/automerge-go"
)

// ErrFreed is the panic value of any use of a Doc after [Doc.Free].
var ErrFreed = errors.New("crdt: use of a freed document")

// Free releases the document's memory now instead of whenever Go's
// garbage collector runs automerge-go's finalizer. A second Free does
// nothing. Forks are independent documents: each needs its own Free.
// Any later use of d panics with [ErrFreed], before it could reach the
// freed memory.
//
// Free must not run while another goroutine uses d (a Doc is not safe
// for concurrent use anyway).
func (d *Doc) Free() {
	if d.def != nil {
		// Written only when set: a second Free writes nothing.
		d.def = nil
	}
	am := d.am
	if am == nil {
		return
	}
	d.am = nil
	d.seqs, d.seqsAt = nil, nil
	d.idx.Store(nil)
	d.jn = journal{}
	freeAM(am)
}

// Freed reports whether Free was called.
func (d *Doc) Freed() bool { return d.am == nil && d.def == nil }

// live returns the automerge document, or panics if d was freed.
func (d *Doc) live() *automerge.Doc {
	if d.def != nil {
		if err := d.Build(); err != nil {
			panic(err)
		}
	}
	if d.am == nil {
		panic(ErrFreed)
	}
	return d.am
}

// The mirrors of automerge-go's types that Free reaches into: Doc holds
// the item its document came in, which holds the result that owns it.
type (
	amDoc struct {
		item *amItem
		cDoc unsafe.Pointer
		m    sync.Mutex
	}
	amItem struct {
		result *amResult
		cItem  unsafe.Pointer
		kind   uint
	}
	amResult struct {
		cResult *C.AMresult
	}
)

// amLayoutErr says why automerge-go's types do not match the mirrors
// (nil: they do, and Free frees).
var amLayoutErr = checkAMLayout()

// checkAMLayout compares automerge.Doc, its item and its result with the
// mirrors, field by field: name, offset, size and kind.
func checkAMLayout() error {
	doc := reflect.TypeFor[automerge.Doc]()
	if err := sameLayout(doc, reflect.TypeFor[amDoc]()); err != nil {
		return err
	}
	if m := doc.Field(2).Type; m != reflect.TypeFor[sync.Mutex]() {
		return fmt.Errorf("automerge-go's Doc.m is %v, not a sync.Mutex", m)
	}
	item := doc.Field(0).Type.Elem()
	if item.Name() != "item" {
		return fmt.Errorf("automerge-go's Doc.item points to %v, not its item", item)
	}
	if err := sameLayout(item, reflect.TypeFor[amItem]()); err != nil {
		return err
	}
	result := item.Field(0).Type.Elem()
	if result.Name() != "result" {
		return fmt.Errorf("automerge-go's item.result points to %v, not its result", result)
	}
	return sameLayout(result, reflect.TypeFor[amResult]())
}

func sameLayout(theirs, ours reflect.Type) error {
	if theirs.Kind() != reflect.Struct || theirs.Size() != ours.Size() || theirs.NumField() != ours.NumField() {
		return fmt.Errorf("automerge-go's %v is %d bytes in %d fields, crdt expects %d in %d",
			theirs, theirs.Size(), theirs.NumField(), ours.Size(), ours.NumField())
	}
	for i := range ours.NumField() {
		t, o := theirs.Field(i), ours.Field(i)
		if t.Name != o.Name || t.Offset != o.Offset || t.Type.Size() != o.Type.Size() ||
			t.Type.Kind() != o.Type.Kind() && !(t.Type.Kind() == reflect.Pointer && o.Type.Kind() == reflect.UnsafePointer) {
			return fmt.Errorf("automerge-go's %v.%s (%v at %d) differs from what crdt expects (%v at %d)",
				theirs, t.Name, t.Type, t.Offset, o.Type, o.Offset)
		}
	}
	return nil
}

// FreeAutomerge releases the memory of a document made with automerge-go
// itself, as [Doc.Free] does for a Doc, for code that measures raw
// automerge-go beside Ferry (its benchmarks' floor) and must free what it
// loads as Ferry does. The document must not be used again.
func FreeAutomerge(am *automerge.Doc) { freeAM(am) }

// freeAM frees an automerge document's memory, as its finalizer would.
// The document must not be used again.
func freeAM(am *automerge.Doc) {
	if amLayoutErr != nil {
		return // left to the finalizer
	}
	m := (*amDoc)(unsafe.Pointer(am))
	// automerge-go holds this lock around every call into its core.
	m.m.Lock()
	defer m.m.Unlock()
	it := m.item
	if it == nil || it.result == nil || it.result.cResult == nil {
		return
	}
	res := it.result
	// The finalizer is registered on this exact pointer (the start of
	// automerge-go's result object); clearing it first means the memory
	// is freed once, here.
	runtime.SetFinalizer(res, nil)
	C.AMresultFree(res.cResult)
	res.cResult, it.cItem, m.cDoc = nil, nil, nil
}
