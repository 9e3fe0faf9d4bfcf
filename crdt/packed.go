package crdt

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"time"
	"unicode/utf8"
)

// Packed fields: a record's current values in a compact binary form, kinds
// kept, for storing beside its document so that reads need not load
// Automerge. The form is
//
//	packed  = version(1) value
//	value   = tag payload
//
// with one tag per kind: nil, false, true; string, Text and bytes (a
// uvarint length, then the bytes); float64 (8 bytes, little-endian); int64
// and Counter (zigzag varint); uint64 (uvarint); time (zigzag varint of
// Unix milliseconds, Automerge's precision); map (a uvarint count, then
// each key, as a length and bytes, and its value, in key order); list (a
// uvarint count, then the values). Equal fields pack to equal bytes.
const packedVersion = 1

const (
	tagNil byte = iota
	tagFalse
	tagTrue
	tagString
	tagText
	tagBytes
	tagFloat
	tagInt
	tagUint
	tagTime
	tagCounter
	tagMap
	tagList
)

// maxPackedDepth bounds the nesting of packed values, so that damaged
// bytes cannot drive the reader's recursion without limit. It is far past
// what Put accepts (maxDepth); a record nested deeper, which only another
// Automerge library could write, does not pack, and is read from its
// document.
const maxPackedDepth = 1024

// PackFields encodes fields, as [Doc.TypedFields] returns them, in the
// packed form. A value of a type a record cannot hold gives ErrType.
func PackFields(fields map[string]any) ([]byte, error) {
	b := make([]byte, 0, 64)
	b = append(b, packedVersion)
	return appendPacked(b, fields, 0)
}

// PackedFields reads the document's fields (kinds kept) in the packed form.
func (d *Doc) PackedFields() ([]byte, error) {
	if d.def != nil {
		if _, p, ok := d.readDeferred(); ok && p != nil {
			d.def.packed = nil // handed out once: not kept in the cache
			return p, nil
		}
	}
	if p, _, ok := packedRead(d.live(), nil); ok {
		return p, nil
	}
	return d.packedSlow()
}

// packedSlow is PackedFields through automerge-go, value by value: for
// what packedRead leaves (a failed read, fields that do not pack), so
// that the error says why.
func (d *Doc) packedSlow() ([]byte, error) {
	f, err := d.fields(true)
	if err != nil {
		return nil, err
	}
	return PackFields(f)
}

func appendPacked(b []byte, v any, depth int) ([]byte, error) {
	if depth > maxPackedDepth {
		return nil, fmt.Errorf("%w: nested deeper than %d", ErrType, maxPackedDepth)
	}
	switch x := v.(type) {
	case nil:
		return append(b, tagNil), nil
	case bool:
		if x {
			return append(b, tagTrue), nil
		}
		return append(b, tagFalse), nil
	case string:
		return appendPackedString(append(b, tagString), x), nil
	case Text:
		return appendPackedString(append(b, tagText), string(x)), nil
	case []byte:
		return appendPackedString(append(b, tagBytes), string(x)), nil
	case float64:
		return binary.LittleEndian.AppendUint64(append(b, tagFloat), math.Float64bits(x)), nil
	case int64:
		return binary.AppendVarint(append(b, tagInt), x), nil
	case uint64:
		return binary.AppendUvarint(append(b, tagUint), x), nil
	case Counter:
		return binary.AppendVarint(append(b, tagCounter), int64(x)), nil
	case time.Time:
		return binary.AppendVarint(append(b, tagTime), x.UnixMilli()), nil
	case map[string]any:
		b = binary.AppendUvarint(append(b, tagMap), uint64(len(x)))
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var err error
		for _, k := range keys {
			b = appendPackedString(b, k)
			if b, err = appendPacked(b, x[k], depth+1); err != nil {
				return nil, err
			}
		}
		return b, nil
	case []any:
		b = binary.AppendUvarint(append(b, tagList), uint64(len(x)))
		var err error
		for _, e := range x {
			if b, err = appendPacked(b, e, depth+1); err != nil {
				return nil, err
			}
		}
		return b, nil
	}
	return nil, fmt.Errorf("%w: cannot pack %T", ErrType, v)
}

func appendPackedString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// UnpackFields decodes packed fields. typed keeps Text and Counter (as
// [Doc.TypedFields] does); otherwise they read as string and int64 (as
// [Doc.Fields]). Bytes that are not a packed map of fields give ErrCorrupt.
func UnpackFields(b []byte, typed bool) (map[string]any, error) {
	if len(b) == 0 || b[0] != packedVersion {
		return nil, fmt.Errorf("%w: packed fields: unknown version", ErrCorrupt)
	}
	p := unpacker{b: b[1:], typed: typed}
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	if len(p.b) != 0 {
		return nil, fmt.Errorf("%w: packed fields: %d bytes past the end", ErrCorrupt, len(p.b))
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: packed fields: not a map", ErrCorrupt)
	}
	return m, nil
}

// DecodePacked decodes packed fields into out with [Doc.Decode]'s rules.
func DecodePacked(b []byte, out any) error {
	f, err := UnpackFields(b, true)
	if err != nil {
		return err
	}
	return DecodeValue(f, out)
}

type unpacker struct {
	b     []byte
	typed bool
}

func (p *unpacker) fail(what string) error {
	return fmt.Errorf("%w: packed fields: %s", ErrCorrupt, what)
}

func (p *unpacker) uvarint() (uint64, error) {
	v, n := binary.Uvarint(p.b)
	if n <= 0 {
		return 0, p.fail("bad varint")
	}
	p.b = p.b[n:]
	return v, nil
}

func (p *unpacker) varint() (int64, error) {
	v, n := binary.Varint(p.b)
	if n <= 0 {
		return 0, p.fail("bad varint")
	}
	p.b = p.b[n:]
	return v, nil
}

// bytes reads a length and that many bytes, without copying.
func (p *unpacker) bytes() ([]byte, error) {
	n, err := p.uvarint()
	if err != nil {
		return nil, err
	}
	if n > uint64(len(p.b)) {
		return nil, p.fail("length past the end")
	}
	s := p.b[:n:n]
	p.b = p.b[n:]
	return s, nil
}

func (p *unpacker) str() (string, error) {
	s, err := p.bytes()
	if err != nil {
		return "", err
	}
	if !utf8.Valid(s) {
		return "", p.fail("string is not UTF-8")
	}
	return string(s), nil
}

// count reads a map's or list's length: each entry takes a byte at least,
// so a count past the bytes left is damage, caught before it allocates.
func (p *unpacker) count() (int, error) {
	n, err := p.uvarint()
	if err != nil {
		return 0, err
	}
	if n > uint64(len(p.b)) {
		return 0, p.fail("count past the end")
	}
	return int(n), nil
}

func (p *unpacker) value(depth int) (any, error) {
	if depth > maxPackedDepth {
		return nil, p.fail("nested too deep")
	}
	if len(p.b) == 0 {
		return nil, p.fail("cut short")
	}
	tag := p.b[0]
	p.b = p.b[1:]
	switch tag {
	case tagNil:
		return nil, nil
	case tagFalse:
		return false, nil
	case tagTrue:
		return true, nil
	case tagString:
		return p.str()
	case tagText:
		s, err := p.str()
		if err != nil || !p.typed {
			return s, err
		}
		return Text(s), nil
	case tagBytes:
		s, err := p.bytes()
		return slices.Clone(s), err
	case tagFloat:
		if len(p.b) < 8 {
			return nil, p.fail("cut short")
		}
		f := math.Float64frombits(binary.LittleEndian.Uint64(p.b))
		p.b = p.b[8:]
		return f, nil
	case tagInt:
		return p.varint()
	case tagUint:
		return p.uvarint()
	case tagCounter:
		n, err := p.varint()
		if err != nil || !p.typed {
			return n, err
		}
		return Counter(n), nil
	case tagTime:
		ms, err := p.varint()
		if err != nil {
			return nil, err
		}
		return time.UnixMilli(ms).UTC(), nil
	case tagMap:
		n, err := p.count()
		if err != nil {
			return nil, err
		}
		m := make(map[string]any, n)
		for range n {
			k, err := p.str()
			if err != nil {
				return nil, err
			}
			if m[k], err = p.value(depth + 1); err != nil {
				return nil, err
			}
		}
		if len(m) != n {
			return nil, p.fail("repeated key")
		}
		return m, nil
	case tagList:
		n, err := p.count()
		if err != nil {
			return nil, err
		}
		l := make([]any, n)
		for i := range l {
			if l[i], err = p.value(depth + 1); err != nil {
				return nil, err
			}
		}
		return l, nil
	}
	return nil, p.fail(fmt.Sprintf("unknown tag %d", tag))
}
