package crdt

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// This file tests Import's refusal of changes that Automerge applies but
// whose document then no longer loads. Each variant is a real change,
// rewritten; besides checking that Import refuses it and leaves the
// document as it was, the test applies it straight through automerge-go
// (as Import did before it checked) to show what the refusal prevents.

var variantTime = time.UnixMilli(1_700_000_000_000)

// variantFixture returns a document and a change it lacks: the second
// change of actor bb02, with two dependencies, two other actors (aa01 and
// cc03), and sets (one over a conflict, so with two predecessors), a set
// in a nested map, a counter increment, a list insert and delete, a text
// splice with multi-byte runes, and a new key with a uint.
func variantFixture(t *testing.T) (*Doc, []byte) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	a, err := New("aa01")
	must(err)
	must(a.Put(map[string]any{
		"name": "lamp", "tags": []string{"x", "y", "z"}, "nested": map[string]any{"a": 1},
		"n": Counter(1), "body": Text("héllo"),
	}))
	_, err = a.Commit("", variantTime)
	must(err)
	b, err := a.Fork(nil)
	must(err)
	must(b.SetActor("bb02"))
	c, err := a.Fork(nil)
	must(err)
	must(c.SetActor("cc03"))
	must(b.Set(Path{"name"}, "b-lamp"))
	_, err = b.Commit("", variantTime)
	must(err)
	must(c.Set(Path{"name"}, "c-lamp"))
	_, err = c.Commit("", variantTime)
	must(err)
	cc, err := c.ChangesSince(a.Heads())
	must(err)
	_, err = b.Import(cc)
	must(err)
	target, err := b.Fork(nil)
	must(err)
	must(target.SetActor("dd04"))
	base := b.Heads()

	must(b.Set(Path{"name"}, "both"))
	must(b.Set(Path{"nested", "a"}, 2))
	must(b.Increment(Path{"n"}, 3))
	must(b.InsertAt(Path{"tags"}, 1, "w"))
	must(b.Delete(Path{"tags", 0}))
	must(b.SpliceText(Path{"body"}, 2, 1, "é🙂"))
	must(b.Set(Path{"fresh"}, uint64(7)))
	_, err = b.Commit("the change", variantTime)
	must(err)
	delta, err := b.ChangesSince(base)
	must(err)
	ci, err := frame(delta)
	must(err)
	if len(ci.payloads) != 1 {
		t.Fatalf("fixture: %d changes", len(ci.payloads))
	}
	return target, ci.payloads[0]
}

// chunkOf frames a change payload, with a correct checksum.
func chunkOf(payload []byte) []byte {
	h := changeHash(payload)
	out := append(bytes.Clone(chunkMagic), h[:4]...)
	out = append(out, chunkChange)
	out = binary.AppendUvarint(out, uint64(len(payload)))
	return append(out, payload...)
}

// compressedChunkOf frames a change payload as a compressed chunk.
func compressedChunkOf(t *testing.T, payload []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.DefaultCompression)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(payload)
	w.Close()
	h := changeHash(payload)
	out := append(bytes.Clone(chunkMagic), h[:4]...)
	out = append(out, chunkCompressed)
	out = binary.AppendUvarint(out, uint64(buf.Len()))
	return append(out, buf.Bytes()...)
}

// What applying a variant straight through automerge-go does.
type rawOutcome int

const (
	breaksReload  rawOutcome = iota // applied, and the saved document does not load
	notApplied                      // Automerge refuses or drops it itself
	reloads                         // applied and reloads: refused because Automerge never writes it
	notTriedCrash                   // not applied: it reaches a panic in the Rust core, which aborts the process
)

type variant struct {
	name    string
	make    func(t *testing.T, c *change) []byte // the rewritten chunk
	why     string                               // in Import's error
	outcome rawOutcome
}

// withColumns re-assembles c with its canonical parts and columns edited
// by edit.
func withColumns(c *change, edit func([]encodedColumn) []encodedColumn) []byte {
	deps, others, ops := c.canonicalParts()
	return chunkOf(c.assemble(deps, others, edit(encodeOpColumns(ops))))
}

// editColumn replaces one column's bytes.
func editColumn(c *change, spec uint64, edit func([]byte) []byte) []byte {
	return withColumns(c, func(cols []encodedColumn) []encodedColumn {
		for i := range cols {
			if cols[i].spec == spec {
				cols[i].data = edit(bytes.Clone(cols[i].data))
			}
		}
		return cols
	})
}

// withOps rewrites the decoded operations, then encodes canonically.
func withOps(c *change, edit func(ops []chOp)) []byte {
	c.ops = slices.Clone(c.ops)
	edit(c.ops)
	return chunkOf(c.encodeCanonical())
}

// firstOp returns the index of the first operation that matches.
func firstOp(t *testing.T, ops []chOp, match func(chOp) bool) int {
	t.Helper()
	for i, op := range ops {
		if match(op) {
			return i
		}
	}
	t.Fatal("fixture has no such operation")
	return 0
}

// padSLEB writes v as a signed LEB128 one byte longer than needed.
func padSLEB(v int64) []byte {
	b := appendSLEB(nil, v)
	b[len(b)-1] |= 0x80
	if v < 0 {
		return append(b, 0x7f)
	}
	return append(b, 0)
}

// uintValues decodes a uint RLE column (nulls as nil).
func uintValues(t *testing.T, col []byte) []*uint64 {
	t.Helper()
	d := newRLE[uint64](col)
	var out []*uint64
	for {
		v, null, ok := d.next()
		if d.err() != nil {
			t.Fatal(d.err())
		}
		if !ok {
			return out
		}
		if null {
			out = append(out, nil)
		} else {
			out = append(out, &v)
		}
	}
}

// literalRLE encodes values as literal runs only (nulls as runs of one
// null): what a careless encoder writes.
func literalRLE(vals []*uint64) []byte {
	var out, lit []byte
	n := 0
	flush := func() {
		if n > 0 {
			out = appendSLEB(out, -int64(n))
			out = append(out, lit...)
		}
		lit, n = nil, 0
	}
	for _, v := range vals {
		if v == nil {
			flush()
			out = append(appendSLEB(out, 0), 1)
			continue
		}
		lit = appendULEB(lit, *v)
		n++
	}
	flush()
	return out
}

// runsOfOne encodes every value as a repeat run of length one.
func runsOfOne(vals []*uint64) []byte {
	var out []byte
	for _, v := range vals {
		if v == nil {
			out = append(appendSLEB(out, 0), 1)
			continue
		}
		out = appendULEB(appendSLEB(out, 1), *v)
	}
	return out
}

func variants() []variant {
	isSet := func(op chOp) bool { return op.action == actSet }
	isDelete := func(op chOp) bool { return op.action == actDelete }
	isInsert := func(op chOp) bool { return op.insert }
	return []variant{
		{name: "non-minimal LEB128 in a column", outcome: breaksReload, why: "action",
			make: func(t *testing.T, c *change) []byte {
				return editColumn(c, specAction, func(b []byte) []byte {
					v, n := readSLEB(b)
					return append(padSLEB(v), b[n:]...)
				})
			}},
		{name: "runs written as literals", outcome: breaksReload, why: "predecessor count",
			make: func(t *testing.T, c *change) []byte {
				return editColumn(c, specPredGroup, func(b []byte) []byte { return literalRLE(uintValues(t, b)) })
			}},
		{name: "literals written as runs of one", outcome: breaksReload, why: "action",
			make: func(t *testing.T, c *change) []byte {
				return editColumn(c, specAction, func(b []byte) []byte { return runsOfOne(uintValues(t, b)) })
			}},
		{name: "a null run split in two", outcome: breaksReload, why: "key actor",
			make: func(t *testing.T, c *change) []byte {
				return editColumn(c, specKeyActor, func(b []byte) []byte {
					if b[0] != 0 || b[1] < 2 {
						t.Fatalf("key actor column does not open with a null run: %x", b)
					}
					return append([]byte{0, 1, 0, b[1] - 1}, b[2:]...)
				})
			}},
		{name: "a delta column re-encoded", outcome: breaksReload, why: "key counter",
			make: func(t *testing.T, c *change) []byte {
				return editColumn(c, specKeyCounter, func(b []byte) []byte {
					// The same deltas, each as a run of one.
					d := newRLE[int64](b)
					var out []byte
					for {
						v, null, ok := d.next()
						if !ok {
							return out
						}
						if null {
							out = append(out, 0, 1)
						} else {
							out = appendSLEB(appendSLEB(out, 1), v)
						}
					}
				})
			}},
		{name: "columns out of order", outcome: notApplied, why: "column",
			make: func(t *testing.T, c *change) []byte {
				return withColumns(c, func(cols []encodedColumn) []encodedColumn {
					cols[0], cols[1] = cols[1], cols[0]
					return cols
				})
			}},
		{name: "an empty column written", outcome: breaksReload, why: "where Automerge would write",
			make: func(t *testing.T, c *change) []byte {
				return withColumns(c, func(cols []encodedColumn) []encodedColumn {
					return append(cols, encodedColumn{spec: specMarkName})
				})
			}},
		{name: "an all-false expand column written", outcome: breaksReload, why: "where Automerge would write",
			make: func(t *testing.T, c *change) []byte {
				return withColumns(c, func(cols []encodedColumn) []encodedColumn {
					return append(cols, encodedColumn{spec: specExpand, data: appendULEB(nil, uint64(len(c.ops)))})
				})
			}},
		{name: "a DEFLATEd column", outcome: notApplied, why: "DEFLATE",
			make: func(t *testing.T, c *change) []byte {
				return withColumns(c, func(cols []encodedColumn) []encodedColumn {
					var buf bytes.Buffer
					w, _ := flate.NewWriter(&buf, flate.DefaultCompression)
					w.Write(cols[len(cols)-1].data)
					w.Close()
					cols[len(cols)-1] = encodedColumn{spec: cols[len(cols)-1].spec | colDeflate, data: buf.Bytes()}
					return cols
				})
			}},
		{name: "an unknown column", outcome: breaksReload, why: "unknown column",
			make: func(t *testing.T, c *change) []byte {
				return withColumns(c, func(cols []encodedColumn) []encodedColumn {
					// Column 8 is unused; a column ID of 16 or more would be
					// refused as out of order by the bundled core, which
					// masks spec bits above the eighth when it sorts them.
					return append(cols, encodedColumn{spec: 8<<4 | 2, data: []byte{1, 1}})
				})
			}},
		{name: "other actors unsorted", outcome: breaksReload, why: "other actors",
			make: func(t *testing.T, c *change) []byte {
				if len(c.others) != 2 {
					t.Fatalf("fixture has %d other actors", len(c.others))
				}
				c.others = [][]byte{c.others[1], c.others[0]}
				swap := func(id *chOpID) {
					if id.actor != 0 {
						id.actor = 3 - id.actor
					}
				}
				c.ops = slices.Clone(c.ops)
				for i := range c.ops {
					op := &c.ops[i]
					swap(&op.obj)
					swap(&op.elem)
					op.pred = slices.Clone(op.pred)
					for j := range op.pred {
						swap(&op.pred[j])
					}
				}
				// Encode with the unsorted table as it stands.
				return chunkOf(c.assemble(c.deps, c.others, encodeOpColumns(c.ops)))
			}},
		{name: "an actor no operation names", outcome: breaksReload, why: "other actors",
			make: func(t *testing.T, c *change) []byte {
				deps, others, ops := c.canonicalParts()
				others = append(others, []byte{0xff, 0x09})
				return chunkOf(c.assemble(deps, others, encodeOpColumns(ops)))
			}},
		{name: "dependencies unsorted", outcome: breaksReload, why: "dependencies",
			make: func(t *testing.T, c *change) []byte {
				deps, others, ops := c.canonicalParts()
				if len(deps) != 2 {
					t.Fatalf("fixture has %d dependencies", len(deps))
				}
				deps[0], deps[1] = deps[1], deps[0]
				return chunkOf(c.assemble(deps, others, encodeOpColumns(ops)))
			}},
		{name: "predecessors unsorted", outcome: breaksReload, why: "predecessors",
			make: func(t *testing.T, c *change) []byte {
				deps, others, ops := c.canonicalParts()
				i := firstOp(t, ops, func(op chOp) bool { return len(op.pred) == 2 })
				ops[i].pred[0], ops[i].pred[1] = ops[i].pred[1], ops[i].pred[0]
				return chunkOf(c.assemble(deps, others, encodeOpColumns(ops)))
			}},
		{name: "a predecessor twice", outcome: breaksReload, why: "predecessors",
			make: func(t *testing.T, c *change) []byte {
				deps, others, ops := c.canonicalParts()
				i := firstOp(t, ops, func(op chOp) bool { return len(op.pred) == 1 })
				ops[i].pred = append(ops[i].pred, ops[i].pred[0])
				return chunkOf(c.assemble(deps, others, encodeOpColumns(ops)))
			}},
		{name: "a null value with a length", outcome: breaksReload, why: "value metadata",
			make: func(t *testing.T, c *change) []byte {
				return editColumn(c, specValueMeta, func(b []byte) []byte {
					vals := uintValues(t, b)
					for _, v := range vals {
						if *v == valNull {
							*v = 1<<4 | valNull
							return canonicalUints(vals)
						}
					}
					t.Fatal("fixture has no null value")
					return nil
				})
			}},
		{name: "a non-minimal uint value", outcome: notApplied, why: "value",
			make: func(t *testing.T, c *change) []byte {
				deps, others, ops := c.canonicalParts()
				var meta, raw []byte
				m := newRLEEncoder(writeUint)
				for _, op := range ops {
					if op.val.code == valUint {
						u := appendULEB(nil, op.val.u)
						u[len(u)-1] |= 0x80
						u = append(u, 0)
						raw = append(raw, u...)
						m.appendValue(uint64(len(u))<<4 | valUint)
						continue
					}
					var mv uint64
					mv, raw = appendValue(raw, op.val)
					m.appendValue(mv)
				}
				meta = m.finish()
				cols := encodeOpColumns(ops)
				for i := range cols {
					switch cols[i].spec {
					case specValueMeta:
						cols[i].data = meta
					case specValue:
						cols[i].data = raw
					}
				}
				return chunkOf(c.assemble(deps, others, cols))
			}},
		{name: "an increment by a uint", outcome: breaksReload, why: "action 5",
			make: func(t *testing.T, c *change) []byte {
				deps, others, ops := c.canonicalParts()
				i := firstOp(t, ops, func(op chOp) bool { return op.action == actIncrement })
				ops[i].val = scalar{code: valUint, u: uint64(ops[i].val.i)}
				return chunkOf(c.assemble(deps, others, encodeOpColumns(ops)))
			}},
		{name: "a delete carrying a value", outcome: breaksReload, why: "action 3",
			make: func(t *testing.T, c *change) []byte {
				deps, others, ops := c.canonicalParts()
				ops[firstOp(t, ops, isDelete)].val = scalar{code: valInt, i: 5}
				return chunkOf(c.assemble(deps, others, encodeOpColumns(ops)))
			}},
		{name: "a set carrying a mark name", outcome: breaksReload, why: "action 1",
			make: func(t *testing.T, c *change) []byte {
				deps, others, ops := c.canonicalParts()
				i := firstOp(t, ops, isSet)
				ops[i].hasMark, ops[i].markName = true, "bold"
				return chunkOf(c.assemble(deps, others, encodeOpColumns(ops)))
			}},
		{name: "a set with the expand flag", outcome: breaksReload, why: "action 1",
			make: func(t *testing.T, c *change) []byte {
				deps, others, ops := c.canonicalParts()
				ops[firstOp(t, ops, isSet)].expand = true
				return chunkOf(c.assemble(deps, others, encodeOpColumns(ops)))
			}},
		{name: "a non-minimal time", outcome: notApplied, why: "time",
			make: func(t *testing.T, c *change) []byte {
				p := c.encodeCanonical()
				at := c.sections[3].end // after the start op
				_, n := readSLEB(p[at:])
				return chunkOf(slices.Concat(p[:at], padSLEB(c.time), p[at+n:]))
			}},
		{name: "a non-minimal chunk length", outcome: notApplied, why: "non-minimal length",
			make: func(t *testing.T, c *change) []byte {
				p := c.encodeCanonical()
				l := appendULEB(nil, uint64(len(p)))
				l[len(l)-1] |= 0x80
				l = append(l, 0)
				out := slices.Concat(chunkMagic, []byte{0, 0, 0, 0, chunkChange}, l, p)
				sum := sha256.Sum256(out[8:])
				copy(out[4:8], sum[:4])
				return out
			}},
		{name: "a compressed chunk of a non-canonical change", outcome: breaksReload, why: "action",
			make: func(t *testing.T, c *change) []byte {
				chunk := editColumn(c, specAction, func(b []byte) []byte {
					v, n := readSLEB(b)
					return append(padSLEB(v), b[n:]...)
				})
				return compressedChunkOf(t, chunkPayload(chunk))
			}},

		// What the operations refer to.
		{name: "a delete of an operation the document does not hold", outcome: breaksReload, why: "predecessor",
			make: func(t *testing.T, c *change) []byte {
				return withOps(c, func(ops []chOp) { ops[firstOp(t, ops, isDelete)].pred[0].ctr = 999 })
			}},
		{name: "a delete with no predecessor", outcome: breaksReload, why: "no predecessor",
			make: func(t *testing.T, c *change) []byte {
				return withOps(c, func(ops []chOp) { ops[firstOp(t, ops, isDelete)].pred = nil })
			}},
		{name: "a set in an object the document does not hold", outcome: breaksReload, why: "object",
			make: func(t *testing.T, c *change) []byte {
				return withOps(c, func(ops []chOp) {
					i := firstOp(t, ops, func(op chOp) bool { return op.action == actSet && op.obj.ctr != 0 })
					ops[i].obj.ctr = 999
				})
			}},
		{name: "a set in an object that is a value", outcome: breaksReload, why: "object",
			make: func(t *testing.T, c *change) []byte {
				return withOps(c, func(ops []chOp) {
					i := firstOp(t, ops, func(op chOp) bool { return op.action == actSet && op.obj.ctr != 0 })
					j := firstOp(t, ops, func(op chOp) bool { return op.action == actSet && op.obj.ctr == 0 && len(op.pred) > 0 })
					ops[i].obj = ops[j].pred[0]
				})
			}},
		{name: "a predecessor at another key", outcome: breaksReload, why: "not at the operation's key",
			make: func(t *testing.T, c *change) []byte {
				return withOps(c, func(ops []chOp) {
					i := firstOp(t, ops, func(op chOp) bool { return op.action == actSet && op.kind == keyProp && len(op.pred) > 0 })
					ops[i].prop = "elsewhere"
				})
			}},
		{name: "an insert with a predecessor", outcome: breaksReload, why: "insert with predecessors",
			make: func(t *testing.T, c *change) []byte {
				return withOps(c, func(ops []chOp) {
					d := ops[firstOp(t, ops, isDelete)]
					ops[firstOp(t, ops, isInsert)].pred = d.pred
				})
			}},
		{name: "an element the object does not hold", outcome: notTriedCrash, why: "element",
			make: func(t *testing.T, c *change) []byte {
				return withOps(c, func(ops []chOp) {
					i := firstOp(t, ops, func(op chOp) bool { return op.insert && op.kind == keyElem })
					ops[i].elem.ctr = 999
				})
			}},
		{name: "a map key in a list", outcome: notTriedCrash, why: "map key in a sequence",
			make: func(t *testing.T, c *change) []byte {
				return withOps(c, func(ops []chOp) {
					i := firstOp(t, ops, isInsert)
					ops[i].kind, ops[i].prop, ops[i].insert = keyProp, "k", false
				})
			}},
		{name: "a predecessor newer than the operation", outcome: breaksReload, why: "older operation",
			make: func(t *testing.T, c *change) []byte {
				// The first set names the last operation of its own change.
				return withOps(c, func(ops []chOp) {
					i := firstOp(t, ops, func(op chOp) bool { return op.action == actSet && op.kind == keyProp && len(op.pred) > 0 })
					ops[i].pred = []chOpID{{ctr: c.startOp + uint64(len(ops)) - 1, actor: 0}}
				})
			}},
		{name: "a start op that reuses the actor's counters", outcome: notTriedCrash, why: "start op",
			make: func(t *testing.T, c *change) []byte {
				c.startOp--
				return chunkOf(c.encodeCanonical())
			}},
	}
}

// canonicalUints encodes uint values canonically.
func canonicalUints(vals []*uint64) []byte {
	e := newRLEEncoder(writeUint)
	for _, v := range vals {
		e.appendValue(*v)
	}
	return e.finish()
}

func TestImportRefusesWhatWouldNotReload(t *testing.T) {
	for _, v := range variants() {
		t.Run(v.name, func(t *testing.T) {
			target, payload := variantFixture(t)
			c, err := decodeChange(payload)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := checkCanonical(payload); err != nil {
				t.Fatalf("the fixture change itself: %v", err)
			}
			chunk := v.make(t, c)
			beforeSave, beforeHeads := target.Save(), target.Heads()

			n, err := target.Import(chunk)
			if !errors.Is(err, ErrCorrupt) || n != 0 {
				t.Fatalf("Import = %d, %v; want ErrCorrupt", n, err)
			}
			if !strings.Contains(err.Error(), v.why) {
				t.Errorf("error %q does not say %q", err, v.why)
			}
			if !target.Heads().Equal(beforeHeads) || !bytes.Equal(target.Save(), beforeSave) {
				t.Fatal("a refused Import changed the document")
			}

			// What Import used to let through.
			if v.outcome == notTriedCrash {
				return
			}
			raw, err := target.Fork(nil)
			if err != nil {
				t.Fatal(err)
			}
			_ = raw.am.LoadIncremental(chunk)
			infos, _ := ParseChanges(chunk)
			applied := len(infos) == 1 && raw.Has(infos[0].Hash)
			var reloadErr error
			if applied {
				_, reloadErr = Load(raw.Save(), "")
			}
			switch {
			case v.outcome == notApplied && applied:
				t.Errorf("automerge-go applied it (reload: %v)", reloadErr)
			case v.outcome == breaksReload && (!applied || reloadErr == nil):
				t.Errorf("applied raw: %v, reload error: %v; want applied and a document that does not load", applied, reloadErr)
			case v.outcome == reloads && (!applied || reloadErr != nil):
				t.Errorf("applied raw: %v, reload error: %v; want applied and reloaded", applied, reloadErr)
			}
		})
	}
}

// Bytes after the columns are kept in a saved document and rebuilt with
// the change, so Import accepts them.
func TestImportKeepsExtraBytes(t *testing.T) {
	target, payload := variantFixture(t)
	chunk := chunkOf(append(bytes.Clone(payload), 1, 2, 3))
	if n, err := target.Import(chunk); n != 1 || err != nil {
		t.Fatalf("Import = %d, %v", n, err)
	}
	l, err := Load(target.Save(), "")
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if !l.Heads().Equal(target.Heads()) {
		t.Fatal("reloaded heads differ")
	}
}

// Automerge can send a change as a compressed chunk (Change::bytes
// compresses one over 256 bytes); Import checks what it inflates to.
func TestImportCompressedChunks(t *testing.T) {
	target, payload := variantFixture(t)
	chunk := compressedChunkOf(t, payload)
	if n, err := target.Import(chunk); n != 1 || err != nil {
		t.Fatalf("Import of a compressed canonical change = %d, %v", n, err)
	}
	// And refuses what a non-canonical one inflates to.
	target, payload = variantFixture(t)
	c, err := decodeChange(payload)
	if err != nil {
		t.Fatal(err)
	}
	bad := editColumn(c, specAction, func(b []byte) []byte {
		v, n := readSLEB(b)
		return append(padSLEB(v), b[n:]...)
	})
	if _, err := target.Import(compressedChunkOf(t, chunkPayload(bad))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Import of a compressed non-canonical change: %v, want ErrCorrupt", err)
	}
}

// Load imports what follows a document with Import's checks: before, a
// saved document followed by a crafted change loaded (and with a map key
// in a list, aborted the process).
func TestLoadChecksTrailingChanges(t *testing.T) {
	for _, v := range variants() {
		if v.name != "a map key in a list" && v.name != "non-minimal LEB128 in a column" {
			continue
		}
		target, payload := variantFixture(t)
		c, err := decodeChange(payload)
		if err != nil {
			t.Fatal(err)
		}
		data := append(target.Save(), v.make(t, c)...)
		if _, err := Load(data, ""); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s after a document: Load = %v, want ErrCorrupt", v.name, err)
		}
	}
	target, payload := variantFixture(t)
	d, err := Load(append(target.Save(), chunkOf(payload)...), "")
	if err != nil {
		t.Fatalf("a document and a change it lacks: %v", err)
	}
	if !d.Has(Hash(changeHash(payload))) {
		t.Fatal("the change after the document was not loaded")
	}
}
