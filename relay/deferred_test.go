package relay_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// A record's first pushes are checked without an Automerge document (see
// crdt.NewDeferred): the relay caches the record's document unbuilt, and
// still answers with its heads and serves it whole.
func TestFirstPushesBuildNoDocument(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), nil)
	a := tr.client("shop")
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	ed := storetest.NewEditor(t, "aa07")
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", ed.Edit(map[string]any{"v": 1}))))
	ack := mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", ed.Edit(map[string]any{"v": 2}))))
	if !tr.srv.CachedDeferred(c, "r") {
		t.Fatal("the record's document was built on the push path")
	}
	if h, err := crdt.HeadsFromSlices(ack.Records[0].Heads); err != nil || !h.Equal(ed.Doc.Heads()) {
		t.Fatalf("acked heads %v, the editor's %v (%v)", h, ed.Doc.Heads(), err)
	}
	got := mustCall[transport.Changes](t, a, &transport.Pull{Collection: "c"})
	var parts [][]byte
	for _, r := range got.Records {
		parts = append(parts, r.Data)
	}
	if f := storetest.FieldsAfter(t, parts...); !crdt.Equal(f, map[string]any{"v": int64(2)}) {
		t.Fatalf("pulled %v", f)
	}
}

// A record read from the store (here by a second relay on the same
// store, whose cache never held it) is loaded, indexed and kept
// deferred: the push merged into it builds no Automerge document, and
// the record holds both relays' changes.
func TestStoredRecordKeptDeferred(t *testing.T) {
	store := memstore.New()
	tr1, tr2 := newTestRelay(t, store, nil), newTestRelay(t, store, nil)
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	e1 := storetest.NewEditor(t, "d111")
	c1 := e1.Edit(map[string]any{"one": 1})
	mustCall[transport.Ack](t, tr1.client("shop"), pushOf("c", 0, rec("r", c1)))
	e2 := follow(t, "d222", c1)
	mustCall[transport.Ack](t, tr2.client("shop"), pushOf("c", 0, rec("r", e2.Edit(map[string]any{"two": 2}))))
	if !tr2.srv.CachedDeferred(c, "r") {
		t.Fatal("the record read from the store was kept as an Automerge document")
	}
	doc, _, _ := relay.Document(context.Background(), store, c, "r")
	if f := storetest.FieldsAfter(t, doc); f["one"] != int64(1) || f["two"] != int64(2) {
		t.Errorf("stored record = %v", f)
	}
}

// Every push that Import into a document refuses is refused on the path
// that checks a new record's changes without one, and stores nothing;
// what Import takes in is stored and loads: the crash corpus of crdt's
// fuzz tests and seeded mutations of a real creation change, each pushed
// as a new record.
func TestHostilePushesToNewRecords(t *testing.T) {
	store := memstore.New()
	tr := newTestRelay(t, store, nil)
	a := tr.client("shop")
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	var inputs [][]byte
	files, err := filepath.Glob("../crdt/testdata/fuzz/FuzzImport/crash-*")
	if err != nil || len(files) == 0 {
		t.Fatalf("crash corpus: %v, %v", files, err)
	}
	for _, f := range files {
		inputs = append(inputs, corpusBytes(t, f))
	}
	creation := storetest.NewEditor(t, "aa08").Edit(map[string]any{"name": "lamp", "tags": []any{"a", "b"}, "dims": map[string]any{"w": 3, "h": 4}})
	seed := uint64(19)
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 5))
	for range 1000 {
		p := bytes.Clone(creation[chunkHeader(creation):])
		for range 1 + rng.IntN(3) {
			p = mutateByte(rng, p)
		}
		inputs = append(inputs, checksummed(p))
	}
	inputs = append(inputs, creation)
	accepted := map[string]crdt.Heads{}
	for i, in := range inputs {
		id := fmt.Sprint("h", i)
		d, _ := crdt.New("")
		_, ierr := d.Import(in)
		head, _ := store.Head(context.Background(), c)
		ack, err := call[transport.Ack](t, a, pushOf("c", 0, rec(id, in)))
		switch {
		case ierr != nil && err == nil:
			t.Fatalf("input %d: Import refuses it (%v), the relay acknowledged it: %x", i, ierr, in)
		case ierr != nil:
			if now, _ := store.Head(context.Background(), c); now != head {
				t.Fatalf("input %d: a refused push moved the log from %d to %d", i, head, now)
			}
		case err != nil:
			var te *transport.Error
			if !errors.As(err, &te) || te.Code != transport.CodeInvalidChange {
				t.Fatalf("input %d: Import takes it in, the relay refused it: %v", i, err)
			}
			t.Logf("input %d: refused by the relay alone: %v", i, err)
		default:
			accepted[id] = d.Heads()
			if h, _ := crdt.HeadsFromSlices(ack.Records[0].Heads); !h.Equal(d.Heads()) {
				t.Fatalf("input %d: acked heads %v, Import's %v", i, h, d.Heads())
			}
		}
		d.Free()
	}
	if len(accepted) < 2 {
		t.Fatalf("%d inputs accepted: the comparison was hardly exercised", len(accepted))
	}
	t.Logf("%d of %d inputs accepted", len(accepted), len(inputs))
	for id, heads := range accepted {
		r, err := store.Record(context.Background(), c, id)
		if err != nil {
			t.Fatal(err)
		}
		d, err := crdt.Load(r.Data(), "")
		if err != nil || !d.Heads().Equal(heads) {
			t.Fatalf("record %s as stored: %v, heads %v, want %v", id, err, d.Heads(), heads)
		}
		if _, err := crdt.Load(d.Save(), ""); err != nil {
			t.Fatalf("record %s does not reload once saved: %v", id, err)
		}
		d.Free()
	}
}

// corpusBytes reads the []byte argument of a go test -fuzz corpus file.
func corpusBytes(t *testing.T, path string) []byte {
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

// chunkHeader returns the length of a change chunk's header (magic,
// checksum, type, length).
func chunkHeader(b []byte) int {
	_, n := binary.Uvarint(b[9:])
	return 9 + n
}

// checksummed frames a change payload as a chunk with a correct checksum,
// as a hostile device would.
func checksummed(payload []byte) []byte {
	out := []byte{0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1}
	out = binary.AppendUvarint(out, uint64(len(payload)))
	out = append(out, payload...)
	sum := sha256.Sum256(out[8:])
	copy(out[4:8], sum[:4])
	return out
}

// mutateByte flips, replaces, inserts or deletes one byte of p.
func mutateByte(rng *rand.Rand, p []byte) []byte {
	if len(p) == 0 {
		return []byte{byte(rng.Uint32())}
	}
	i := rng.IntN(len(p))
	switch rng.IntN(4) {
	case 0:
		p[i] ^= 1 << rng.IntN(8)
	case 1:
		p[i] = byte(rng.Uint32())
	case 2:
		return append(p[:i:i], append([]byte{byte(rng.Uint32())}, p[i:]...)...)
	default:
		return append(p[:i:i], p[i+1:]...)
	}
	return p
}
