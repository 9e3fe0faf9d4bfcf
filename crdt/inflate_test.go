package crdt_test

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"runtime"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

var chunkMagic = []byte{0x85, 0x6f, 0x4a, 0x83}

func deflate(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// chunk builds a chunk of typ around payload with checksum sum.
func chunk(typ byte, sum []byte, payload []byte) []byte {
	b := append(append([]byte{}, chunkMagic...), sum[:4]...)
	b = append(b, typ)
	b = binary.AppendUvarint(b, uint64(len(payload)))
	return append(b, payload...)
}

// zeros returns a raw DEFLATE stream of about 65 KB that inflates to n
// MiB of zeros: one flushed, byte-aligned block of 1 MiB repeated, then an
// empty final block (compressing the whole would be slow under -race).
func zeros(t testing.TB, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(make([]byte, 1<<20))
	w.Flush()
	return append(bytes.Repeat(buf.Bytes(), n), 1, 0, 0, 0xff, 0xff)
}

// bomb returns a compressed change chunk of about 65 KB that inflates to
// 64 MiB. Its checksum is wrong, which framing finds only after inflating.
func bomb(t testing.TB) []byte {
	return chunk(2, []byte{1, 2, 3, 4}, zeros(t, 64))
}

// compressChange turns a change chunk into the compressed chunk Automerge
// also writes: the DEFLATE of its payload, under the change's checksum.
func compressChange(t testing.TB, c []byte) []byte {
	t.Helper()
	hdr := chunkHeaderLen(c)
	return chunk(2, c[4:8], deflate(t, c[hdr:]))
}

func allocated() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

// TestInflateBudgetStopsBomb: a 65 KB chunk that inflates to 64 MiB is
// refused once it passes the budget, having inflated about the budget and
// no more, and the error says why (not corrupt: too large).
func TestInflateBudgetStopsBomb(t *testing.T) {
	b := bomb(t)
	if len(b) > 70<<10 {
		t.Fatalf("bomb is %d bytes", len(b))
	}
	const budget = 1 << 20
	bg := crdt.NewInflateBudget(budget)
	before := allocated()
	_, err := crdt.ParseChangesWithin(b, bg)
	used := allocated() - before
	if !errors.Is(err, crdt.ErrInflateLimit) || errors.Is(err, crdt.ErrCorrupt) {
		t.Fatalf("ParseChangesWithin(bomb) = %v, want ErrInflateLimit alone", err)
	}
	if crdt.BudgetLeft(bg) != 0 {
		t.Errorf("budget left %d after a refusal", crdt.BudgetLeft(bg))
	}
	// io.ReadAll doubles its buffer, and flate keeps a 32 KiB window: a
	// few times the budget (more under -race), not the 64 MiB the chunk
	// claims, nor the 165 MB that inflating it took.
	if used > 8*budget {
		t.Errorf("framing the bomb allocated %d bytes under a budget of %d", used, budget)
	}
	t.Logf("refused after allocating %d bytes", used)

	// The same bomb inside a compressed column of a document chunk: actor
	// table, heads and change columns empty, one DEFLATEd action column.
	col := zeros(t, 64)
	p := []byte{0, 0, 0, 1, 4<<4 | 2 | 8}
	p = binary.AppendUvarint(p, uint64(len(col)))
	p = append(p, col...)
	var hdr []byte
	hdr = binary.AppendUvarint(append(hdr, 0), uint64(len(p)))
	sum := sha256.Sum256(append(hdr, p...))
	doc := chunk(0, sum[:], p)
	bg = crdt.NewInflateBudget(budget)
	before = allocated()
	_, err = crdt.ParseChangesWithin(doc, bg)
	used = allocated() - before
	if !errors.Is(err, crdt.ErrInflateLimit) {
		t.Fatalf("ParseChangesWithin(document with a bomb column) = %v, want ErrInflateLimit", err)
	}
	if used > 8*budget {
		t.Errorf("framing the column bomb allocated %d bytes under a budget of %d", used, budget)
	}
}

// TestInflateBudgetIsShared: compressed changes pass under a budget that
// holds them, which is charged what they inflate to, and a budget shared
// by two calls refuses the second once the first has used it up. Without
// a budget the same bytes parse as before.
func TestInflateBudgetIsShared(t *testing.T) {
	d := newDoc(t, actorA)
	var parts [][]byte
	at := d.Heads()
	for i := range 2 {
		set(t, d, crdt.Path{"text"}, string(bytes.Repeat([]byte{'a' + byte(i)}, 20_000)))
		commit(t, d)
		c, err := d.ChangesSince(at)
		if err != nil {
			t.Fatal(err)
		}
		at = d.Heads()
		parts = append(parts, compressChange(t, c))
	}
	plain, err := crdt.ParseChanges(parts[0])
	if err != nil || len(plain) != 1 {
		t.Fatalf("ParseChanges(compressed change) = %v, %v", plain, err)
	}
	bg := crdt.NewInflateBudget(30_000)
	got, err := crdt.ParseChangesWithin(parts[0], bg)
	if err != nil || len(got) != 1 || got[0].Hash != plain[0].Hash {
		t.Fatalf("ParseChangesWithin = %v, %v; want %v", got, err, plain)
	}
	if used := 30_000 - crdt.BudgetLeft(bg); used < 20_000 {
		t.Errorf("budget charged %d bytes for a 20,000-byte change", used)
	}
	if _, err := crdt.ParseChangesWithin(parts[1], bg); !errors.Is(err, crdt.ErrInflateLimit) {
		t.Fatalf("second change on the same budget: %v, want ErrInflateLimit", err)
	}
	// A compressed change imports like the plain one.
	e := newDoc(t, actorB)
	if _, err := e.Import(append(parts[0], parts[1]...)); err != nil {
		t.Fatal(err)
	}
	if !e.Heads().Equal(d.Heads()) {
		t.Errorf("heads after importing compressed changes: %v, want %v", e.Heads(), d.Heads())
	}
}
