package crdt_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// corruptFixture returns a document with some history (the import target),
// and a delta it lacks from a second replica.
func corruptFixture(t testing.TB) (target *crdt.Doc, delta []byte) {
	t.Helper()
	target = newDoc(t, actorA)
	set(t, target, crdt.Path{"name"}, "lamp")
	set(t, target, crdt.Path{"tags"}, []string{"x"})
	commit(t, target)
	other := newDoc(t, actorB)
	send(t, target, other)
	base := other.Heads()
	set(t, other, crdt.Path{"name"}, "desk lamp")
	if err := other.SpliceText(crdt.Path{"body"}, 0, 0, "héllo"); err != nil {
		t.Fatal(err)
	}
	commit(t, other)
	if err := other.Increment(crdt.Path{"n"}, 2); err != nil {
		t.Fatal(err)
	}
	commit(t, other)
	delta, err := other.ChangesSince(base)
	if err != nil {
		t.Fatal(err)
	}
	return target, delta
}

func TestImportEmptyIsNoop(t *testing.T) {
	d, _ := corruptFixture(t)
	before := stateOf(t, d)
	for _, b := range [][]byte{nil, {}} {
		if n, err := d.Import(b); n != 0 || err != nil {
			t.Fatalf("Import(%v) = %d, %v", b, n, err)
		}
	}
	before.check(t, d, "empty import")
}

func TestImportTruncated(t *testing.T) {
	d, delta := corruptFixture(t)
	before := stateOf(t, d)
	boundary := map[int]int{} // cut at the end of a chunk -> changes before it
	end := 0
	for i, c := range splitChunks(t, delta) {
		end += len(c)
		boundary[end] = i + 1
	}
	for cut := 1; cut < len(delta); cut++ {
		n, err := d.Import(delta[:cut])
		if whole, ok := boundary[cut]; ok {
			// Whole changes are a valid, shorter stream.
			if n != whole || err != nil {
				t.Fatalf("Import of the first %d whole changes = %d, %v", whole, n, err)
			}
			d, _ = corruptFixture(t)
			continue
		}
		if !errors.Is(err, crdt.ErrCorrupt) {
			t.Fatalf("Import of the first %d of %d bytes = %d, %v; want ErrCorrupt", cut, len(delta), n, err)
		}
		before.check(t, d, "truncated import")
	}
	// The whole delta still imports afterwards.
	if n, err := d.Import(delta); n != 2 || err != nil {
		t.Fatalf("Import(delta) = %d, %v", n, err)
	}
}

func TestImportTrailingGarbage(t *testing.T) {
	d, delta := corruptFixture(t)
	before := stateOf(t, d)
	for _, tail := range [][]byte{{0}, []byte("garbage"), delta[:9], append([]byte{0x85, 0x6f, 0x4a, 0x83}, make([]byte, 40)...)} {
		if _, err := d.Import(append(bytes.Clone(delta), tail...)); !errors.Is(err, crdt.ErrCorrupt) {
			t.Fatalf("delta + %q: %v, want ErrCorrupt", tail, err)
		}
		before.check(t, d, "delta with trailing garbage")
	}
	// Garbage in front.
	if _, err := d.Import(append([]byte{1}, delta...)); !errors.Is(err, crdt.ErrCorrupt) {
		t.Fatalf("garbage + delta: %v, want ErrCorrupt", err)
	}
	before.check(t, d, "garbage before a delta")
}

func TestImportFlippedBits(t *testing.T) {
	d, delta := corruptFixture(t)
	before := stateOf(t, d)
	for i := range delta {
		for _, bit := range []byte{0x01, 0x80} {
			bad := bytes.Clone(delta)
			bad[i] ^= bit
			if _, err := d.Import(bad); !errors.Is(err, crdt.ErrCorrupt) {
				t.Fatalf("bit %#x of byte %d flipped: %v, want ErrCorrupt", bit, i, err)
			}
		}
	}
	before.check(t, d, "flipped bits")
}

func TestImportMissingDeps(t *testing.T) {
	d := newDoc(t, actorA)
	set(t, d, crdt.Path{"own"}, 1)
	commit(t, d)
	src := newDoc(t, actorB)
	set(t, src, crdt.Path{"x"}, 1)
	commit(t, src)
	h := src.Heads()
	set(t, src, crdt.Path{"x"}, 2)
	commit(t, src)
	tail, err := src.ChangesSince(h) // depends on h, which d lacks
	if err != nil {
		t.Fatal(err)
	}
	before := stateOf(t, d)
	if n, err := d.Import(tail); !errors.Is(err, crdt.ErrMissingDeps) || n != 0 {
		t.Fatalf("Import without deps = %d, %v; want ErrMissingDeps", n, err)
	}
	before.check(t, d, "missing deps")
	// Out of order in one stream: the dependent change first.
	all, err := src.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	first := all[:len(all)-len(tail)]
	if _, err := d.Import(append(bytes.Clone(tail), first...)); !errors.Is(err, crdt.ErrMissingDeps) {
		t.Fatalf("dependent change before its dep: %v, want ErrMissingDeps", err)
	}
	before.check(t, d, "out-of-order stream")
	// After a snapshot that does not hold the dependency.
	other := newDoc(t, actorC)
	set(t, other, crdt.Path{"o"}, 1)
	commit(t, other)
	if _, err := d.Import(append(other.Save(), tail...)); !errors.Is(err, crdt.ErrMissingDeps) {
		t.Fatalf("snapshot + unrelated dependent change: %v, want ErrMissingDeps", err)
	}
	before.check(t, d, "snapshot + missing deps")
	// After a snapshot that brings nothing new: Automerge would keep the
	// dependent change in a hidden queue (which Save writes out) without
	// moving the heads.
	if _, err := d.Import(append(d.Save(), tail...)); !errors.Is(err, crdt.ErrMissingDeps) {
		t.Fatalf("own snapshot + dependent change: %v, want ErrMissingDeps", err)
	}
	before.check(t, d, "own snapshot + missing deps")
	// With the dependency, in order, it applies.
	if n, err := d.Import(append(bytes.Clone(first), tail...)); n != 2 || err != nil {
		t.Fatalf("in-order stream = %d, %v", n, err)
	}
}

// A stream whose first changes are fine but a later one is refused by
// Automerge must not leave the fine ones applied.
func TestImportAtomicWhenAutomergeRefuses(t *testing.T) {
	d := newDoc(t, actorA)
	set(t, d, crdt.Path{"v"}, 0)
	commit(t, d)
	f, err := d.Fork(nil) // same actor: its next change collides with d's
	if err != nil {
		t.Fatal(err)
	}
	set(t, d, crdt.Path{"v"}, 1)
	commit(t, d)
	set(t, f, crdt.Path{"w"}, 1)
	commit(t, f)
	collide, err := f.ChangesSince(d.Heads()[:0])
	if err != nil {
		t.Fatal(err)
	}
	fine := newDoc(t, actorC)
	set(t, fine, crdt.Path{"c"}, 1)
	commit(t, fine)
	good, err := fine.ChangesSince(nil)
	if err != nil {
		t.Fatal(err)
	}
	before := stateOf(t, d)
	if _, err := d.Import(append(bytes.Clone(good), collide...)); err == nil {
		t.Fatal("import of a colliding change succeeded")
	}
	before.check(t, d, "good change then a refused one")
}

// A chunk that frames and checksums correctly but whose body is nonsense
// (what a hostile peer can send) is refused, and nothing is applied.
func TestImportChecksummedNonsense(t *testing.T) {
	d, delta := corruptFixture(t)
	before := stateOf(t, d)
	infos, err := crdt.ParseChanges(delta)
	if err != nil {
		t.Fatal(err)
	}
	chunks := splitChunks(t, delta)
	if len(chunks) != len(infos) || len(chunks) != 2 {
		t.Fatalf("%d chunks, %d infos", len(chunks), len(infos))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		bad := bytes.Clone(chunks[1])
		// Scramble bytes after the deps so framing accepts it.
		hdr := chunkHeaderLen(bad)
		body := bad[hdr:]
		skip := 1 + 32*len(infos[1].Deps)
		for range 1 + rng.IntN(4) {
			j := skip + rng.IntN(len(body)-skip)
			body[j] ^= byte(1 + rng.IntN(255))
		}
		fixChecksum(bad)
		stream := append(bytes.Clone(chunks[0]), bad...)
		n, err := d.Import(stream)
		if err == nil {
			// Automerge found it meaningful after all: then it was applied
			// whole. Undo by starting again.
			if n != 2 {
				t.Fatalf("round %d: Import = %d, nil; want 2 or an error", i, n)
			}
			d, _ = corruptFixture(t)
			continue
		}
		if !errors.Is(err, crdt.ErrCorrupt) && !errors.Is(err, crdt.ErrMissingDeps) {
			t.Fatalf("round %d: Import = %v, want ErrCorrupt", i, err)
		}
		before.check(t, d, "checksummed nonsense")
	}
}

func TestImportRandomBytes(t *testing.T) {
	d, delta := corruptFixture(t)
	before := stateOf(t, d)
	rng := rand.New(rand.NewPCG(3, 4))
	for range 500 {
		b := make([]byte, rng.IntN(200))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if rng.IntN(2) == 0 && len(b) >= 4 {
			copy(b, delta[:4]) // a plausible magic number
		}
		if len(b) == 0 {
			continue
		}
		if _, err := d.Import(b); !errors.Is(err, crdt.ErrCorrupt) {
			t.Fatalf("random bytes %x: %v, want ErrCorrupt", b, err)
		}
	}
	before.check(t, d, "random bytes")
}

func TestLoadCorrupt(t *testing.T) {
	d, _ := corruptFixture(t)
	saved := d.Save()
	for cut := 1; cut < len(saved); cut++ {
		if _, err := crdt.Load(saved[:cut], ""); !errors.Is(err, crdt.ErrCorrupt) {
			t.Fatalf("Load of %d of %d bytes: %v, want ErrCorrupt", cut, len(saved), err)
		}
	}
	for i := range saved {
		bad := bytes.Clone(saved)
		bad[i] ^= 0x10
		if _, err := crdt.Load(bad, ""); !errors.Is(err, crdt.ErrCorrupt) {
			t.Fatalf("Load with byte %d flipped: %v, want ErrCorrupt", i, err)
		}
	}
	if _, err := crdt.Load(append(bytes.Clone(saved), 0), ""); !errors.Is(err, crdt.ErrCorrupt) {
		t.Fatalf("Load with a trailing byte: %v, want ErrCorrupt", err)
	}
	if _, err := crdt.Load([]byte("not automerge at all"), ""); !errors.Is(err, crdt.ErrCorrupt) {
		t.Fatalf("Load of text: %v, want ErrCorrupt", err)
	}
}

// splitChunks cuts a stream into its chunks.
func splitChunks(t testing.TB, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		hdr := chunkHeaderLen(b)
		n, _ := binary.Uvarint(b[9:])
		end := hdr + int(n)
		if hdr <= 9 || end > len(b) {
			t.Fatalf("bad chunk at %x", b[:min(len(b), 16)])
		}
		out = append(out, b[:end:end])
		b = b[end:]
	}
	return out
}

// chunkHeaderLen is the length of a chunk's header: magic, checksum, type
// and the uLEB128 payload length.
func chunkHeaderLen(b []byte) int {
	if len(b) < 10 {
		return 0
	}
	_, ln := binary.Uvarint(b[9:])
	if ln <= 0 {
		return 0
	}
	return 9 + ln
}

// fixChecksum rewrites a chunk's checksum to match its (edited) contents,
// as a hostile peer would.
func fixChecksum(chunk []byte) {
	hdr := chunkHeaderLen(chunk)
	if hdr == 0 {
		return
	}
	n, _ := binary.Uvarint(chunk[9:])
	end := min(len(chunk), hdr+int(min(n, uint64(len(chunk)))))
	sum := sha256.Sum256(chunk[8:end])
	copy(chunk[4:8], sum[:4])
}

// The crash-* inputs in testdata/fuzz/FuzzImport are chunks with correct
// checksums that made automerge-go's Rust core panic, which aborts the
// process: a change chunk or a document chunk naming an actor past its
// actor table, document chunks with an unknown action or an increment by a
// string, and a change that writes a map key into a list (applied to a
// list holding elements, it reaches "can only compare map keys"). Import
// and Load must refuse them, leaving the document as it was. (FuzzImport
// runs them too; this names what they are.)
func TestImportRefusesCrashers(t *testing.T) {
	files, err := filepath.Glob("testdata/fuzz/FuzzImport/crash-*")
	if err != nil || len(files) < 7 {
		t.Fatalf("crash corpus: %v, %v", files, err)
	}
	d, _ := corruptFixture(t)
	before := stateOf(t, d)
	for _, f := range files {
		data := readFuzzBytes(t, f)
		if _, err := d.Import(data); !errors.Is(err, crdt.ErrCorrupt) {
			t.Errorf("%s: Import = %v, want ErrCorrupt", f, err)
		}
		before.check(t, d, f)
		if _, err := crdt.Load(data, ""); !errors.Is(err, crdt.ErrCorrupt) {
			t.Errorf("%s: Load = %v, want ErrCorrupt", f, err)
		}
	}
}

// readFuzzBytes reads the []byte argument of a corpus file written by go
// test -fuzz.
func readFuzzBytes(t *testing.T, path string) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[1], "[]byte(") {
		t.Fatalf("%s: not a fuzz corpus file", path)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return []byte(s)
}

// An actor's changes are numbered 1, 2, 3... A change that skips numbers
// (crafted: Automerge itself never writes one) is refused: automerge-go
// would accept it and then save a document that does not load.
func TestImportSequenceGap(t *testing.T) {
	d := newDoc(t, actorA)
	set(t, d, crdt.Path{"x"}, 1)
	commit(t, d)
	src := newDoc(t, actorB)
	send(t, d, src)
	set(t, src, crdt.Path{"y"}, 2)
	commit(t, src)
	delta, err := src.ChangesSince(d.Heads())
	if err != nil {
		t.Fatal(err)
	}
	before := stateOf(t, d)
	for _, seq := range []byte{0, 2, 5} {
		bad := withSeq(t, delta, seq)
		if _, err := d.Import(bad); !errors.Is(err, crdt.ErrCorrupt) {
			t.Fatalf("change numbered %d as actor's first: %v, want ErrCorrupt", seq, err)
		}
		before.check(t, d, "sequence gap")
	}
	if n, err := d.Import(withSeq(t, delta, 1)); n != 1 || err != nil {
		t.Fatalf("the unchanged change: %d, %v", n, err)
	}
}

// withSeq rewrites the sequence number of a one-change stream (a one-byte
// uLEB128) and fixes its checksum.
func withSeq(t *testing.T, chunk []byte, seq byte) []byte {
	t.Helper()
	out := bytes.Clone(chunk)
	p := chunkHeaderLen(out)
	ndeps := int(out[p])
	p += 1 + 32*ndeps
	p += 1 + int(out[p]) // actor
	if out[p] != 1 {
		t.Fatalf("expected sequence number 1, found %d", out[p])
	}
	out[p] = seq
	fixChecksum(out)
	return out
}

// A whole saved document imported into an empty one (a record a device
// pulls for the first time) becomes that document, under the empty one's
// actor; damaged, it is refused and the empty document stays empty and
// usable.
func TestImportWholeDocumentIntoEmpty(t *testing.T) {
	src, delta := corruptFixture(t)
	if _, err := src.Import(delta); err != nil {
		t.Fatal(err)
	}
	saved := src.Save()
	want := stateOf(t, src)

	d := newDoc(t, actorC)
	n, err := d.Import(saved)
	if err != nil {
		t.Fatal(err)
	}
	if changes, _ := src.ChangesSince(nil); n != len(mustParse(t, changes)) {
		t.Fatalf("Import added %d changes, want every change of the document's", n)
	}
	if !d.Heads().Equal(want.heads) || !reflect.DeepEqual(fields(t, d), want.fields) {
		t.Fatalf("imported document: heads %v, fields %v; want %v, %v", d.Heads(), fields(t, d), want.heads, want.fields)
	}
	if got := d.Actor(); got != actorC {
		t.Fatalf("actor after the import: %s, want the document's own %s", got, actorC)
	}
	if n, err := d.Import(saved); n != 0 || err != nil {
		t.Fatalf("second import: %d, %v; want nothing new", n, err)
	}
	// The document goes on, and the whole still reloads.
	before := d.Heads()
	set(t, d, crdt.Path{"name"}, "floor lamp")
	commit(t, d)
	edit, err := d.ChangesSince(before)
	if err != nil {
		t.Fatal(err)
	}
	if infos := mustParse(t, edit); len(infos) != 1 {
		t.Fatalf("the edit after the import: %+v, want one change", infos)
	}
	if _, err := crdt.Load(d.Save(), ""); err != nil {
		t.Fatalf("the document no longer loads: %v", err)
	}

	for i := range saved {
		bad := bytes.Clone(saved)
		bad[i] ^= 0x01
		e := newDoc(t, actorC)
		empty := stateOf(t, e)
		if _, err := e.Import(bad); err == nil {
			continue // a flip Automerge's checksum does not see, as in any import
		}
		empty.check(t, e, "damaged document into an empty one")
		set(t, e, crdt.Path{"n"}, 1)
		commit(t, e)
		if got := e.Actor(); got != actorC {
			t.Fatalf("actor after a refused import: %s, want %s", got, actorC)
		}
	}
}

func mustParse(t *testing.T, b []byte) []crdt.ChangeInfo {
	t.Helper()
	infos, err := crdt.ParseChanges(b)
	if err != nil {
		t.Fatal(err)
	}
	return infos
}
