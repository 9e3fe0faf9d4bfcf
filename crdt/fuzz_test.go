package crdt_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// fuzzSeeds are valid streams and near misses: deltas, whole documents,
// a snapshot followed by a delta, truncations.
func fuzzSeeds(t testing.TB) (target []byte, inputs [][]byte) {
	d, delta := corruptFixture(t)
	target = d.Save()
	src := newDoc(t, actorB)
	if _, err := src.Import(target); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Import(delta); err != nil {
		t.Fatal(err)
	}
	all, err := src.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	whole := src.Save()
	inputs = [][]byte{
		delta, all, whole,
		append(bytes.Clone(target), delta...),
		delta[:len(delta)/2],
		whole[:len(whole)-1],
		splitChunks(t, delta)[1], // missing its dependency
		{0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 0},
	}
	return target, inputs
}

// FuzzImport imports arbitrary bytes into a document that holds changes.
// With fix set, chunk checksums are recomputed first (as a hostile peer
// would), so the bytes reach Automerge's parser instead of stopping at
// framing. It must never panic or crash; a failed import must leave the
// document exactly as it was; a successful one must leave a document that
// reads, writes, exports and saves, and whose save loads back with the same
// heads and fields (see Import's doc).
func FuzzImport(f *testing.F) {
	target, inputs := fuzzSeeds(f)
	for _, s := range inputs {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		if fix {
			data = fixAllChecksums(data)
		}
		d, err := crdt.Load(target, actorC)
		if err != nil {
			t.Fatal(err)
		}
		before := stateOf(t, d)
		n, err := d.Import(data)
		if err != nil {
			if n != 0 {
				t.Fatalf("Import failed but reported %d new changes", n)
			}
			if !errors.Is(err, crdt.ErrCorrupt) && !errors.Is(err, crdt.ErrMissingDeps) {
				t.Fatalf("Import error %v is neither ErrCorrupt nor ErrMissingDeps", err)
			}
			before.check(t, d, "failed import")
			return
		}
		if n == 0 && !d.Heads().Equal(before.heads) {
			t.Fatalf("Import reported no new changes but heads moved")
		}
		checkUsable(t, d, true)
		if n2, err := d.Import(data); n2 != 0 || err != nil {
			t.Fatalf("second Import = %d, %v; want 0, nil", n2, err)
		}
	})
}

// FuzzLoad loads arbitrary bytes. It must never panic, and a document it
// loads must read, save and load again.
func FuzzLoad(f *testing.F) {
	target, inputs := fuzzSeeds(f)
	f.Add(target, false)
	f.Add(target, true)
	for _, s := range inputs {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		if fix {
			data = fixAllChecksums(data)
		}
		d, err := crdt.Load(data, actorC)
		if err != nil {
			if !errors.Is(err, crdt.ErrCorrupt) {
				t.Fatalf("Load error %v is not ErrCorrupt", err)
			}
			return
		}
		checkUsable(t, d, !fix)
	})
}

// checkUsable exercises a document that Load or Import accepted. With
// mustReload (always, for Import), its saved bytes must load back to the
// same document; otherwise a refusal (ErrCorrupt, never a crash) is
// tolerated: a crafted document chunk that Load accepts is Automerge's
// own reading, which Ferry does not re-check.
func checkUsable(t *testing.T, d *crdt.Doc, mustReload bool) {
	t.Helper()
	f, err := d.Fields()
	if err != nil {
		t.Fatalf("Fields of an accepted document: %v", err)
	}
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatalf("Decode of an accepted document: %v", err)
	}
	l, err := crdt.Load(d.Save(), "")
	switch {
	case err == nil:
		if !l.Heads().Equal(d.Heads()) {
			t.Fatalf("Load(Save()) heads differ")
		}
		if lf, err := l.Fields(); err != nil || !crdt.Equal(lf, f) {
			t.Fatalf("Load(Save()) fields differ: %v", err)
		}
	case mustReload || !errors.Is(err, crdt.ErrCorrupt):
		t.Fatalf("Load(Save()) of an accepted document: %v", err)
	}
	all, err := d.ChangesSince(nil)
	if err != nil {
		t.Fatalf("ChangesSince(nil) of an accepted document: %v", err)
	}
	e, err := crdt.New(actorB)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Import(all); err != nil {
		t.Fatalf("re-import of an accepted document's changes: %v", err)
	}
	// Writing still works.
	if err := d.Set(crdt.Path{"fuzz"}, 1); err != nil {
		t.Fatalf("Set on an accepted document: %v", err)
	}
	if _, err := d.Commit("", epoch); err != nil {
		t.Fatalf("Commit on an accepted document: %v", err)
	}
}

// fixAllChecksums walks b as chunks as far as it frames and rewrites each
// chunk's checksum to match its contents.
func fixAllChecksums(b []byte) []byte {
	b = bytes.Clone(b)
	for off := 0; off < len(b); {
		rest := b[off:]
		hdr := chunkHeaderLen(rest)
		if hdr == 0 {
			break
		}
		fixChecksum(rest)
		n, _ := binary.Uvarint(rest[9:])
		if n > uint64(len(rest)-hdr) {
			break
		}
		off += hdr + int(n)
	}
	return b
}
