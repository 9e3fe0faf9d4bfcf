package transport

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// msgpack v5 converts integers to the Go field's type without a range
// check: 65537 decodes into a uint16 as 1, -1 into a uint64 as 2^64-1, and
// 2^32+1 into a uint32 as 1. checkInts walks a msgpack value beside the Go
// type it is about to be decoded into and refuses any integer that its
// destination cannot hold, so every integer field of every message gets the
// same check, from the field types alone.
//
// The walk follows msgpack's own mapping: a struct is a map whose string
// keys are the fields' msgpack tags (or names); unknown keys are skipped; a
// slice is an array. It checks only integers bound for integer fields: a
// value of the wrong kind is left for the decoder to refuse. One difference
// is deliberate: msgpack also decodes a struct from an array of its fields
// in order, which no peer of this protocol sends; checkInts refuses it, as
// the field order of a Go struct is not part of the protocol.

// plan is what the walk does with a value bound for one Go type.
type plan struct {
	kind   planKind
	bits   int              // integer kinds: the type's size
	name   string           // the Go type, for error messages
	fields map[string]*plan // structs: by msgpack key
	elem   *plan            // slices and arrays
}

type planKind uint8

const (
	planSkip   planKind = iota // holds no integer: not walked
	planUint                   // unsigned integer of bits
	planInt                    // signed integer of bits
	planStruct                 // map of fields
	planSlice                  // array of elem
)

var plans sync.Map // reflect.Type -> *plan

// planFor returns the plan for t, built once per type.
func planFor(t reflect.Type) *plan {
	if p, ok := plans.Load(t); ok {
		return p.(*plan)
	}
	p := buildPlan(t, map[reflect.Type]*plan{})
	plans.Store(t, p)
	return p
}

// buildPlan builds t's plan; seen breaks cycles of recursive types.
func buildPlan(t reflect.Type, seen map[reflect.Type]*plan) *plan {
	if p, ok := seen[t]; ok {
		return p
	}
	p := &plan{name: t.String()}
	seen[t] = p
	switch t.Kind() {
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		p.kind, p.bits = planUint, t.Bits()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		p.kind, p.bits = planInt, t.Bits()
	case reflect.Pointer:
		return buildPlan(t.Elem(), seen)
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			break // bytes: bin or str on the wire, never an array of ints
		}
		if e := buildPlan(t.Elem(), seen); e.kind != planSkip || e == p {
			p.kind, p.elem = planSlice, e
		}
	case reflect.Struct:
		fields := map[string]*plan{}
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("msgpack"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fields[name] = buildPlan(f.Type, seen)
		}
		// A struct is walked even without integer fields: it must be a map.
		p.kind, p.fields = planStruct, fields
	}
	return p
}

// checkInts checks the msgpack value b against v, a pointer to the value
// it will be decoded into. Errors name the field: "records[2].seq".
func checkInts(b []byte, v any) error {
	w := intWalker{b: b}
	return w.value(planFor(reflect.TypeOf(v)), "")
}

type intWalker struct {
	b   []byte
	pos int
}

var errTruncated = errors.New("msgpack truncated")

func (w *intWalker) value(p *plan, path string) error {
	if p.kind == planSkip {
		return w.skip()
	}
	if w.pos >= len(w.b) {
		return errTruncated
	}
	c := w.b[w.pos]
	switch p.kind {
	case planUint, planInt:
		neg, mag, ok, err := w.integer()
		if err != nil {
			return err
		}
		if !ok {
			return w.skip() // nil, or a type the decoder refuses
		}
		return checkRange(p, neg, mag, path)
	case planSlice:
		n, ok, err := w.arrayLen()
		if err != nil {
			return err
		}
		if !ok {
			return w.skip() // nil, or a type the decoder refuses
		}
		for i := range n {
			if err := w.value(p.elem, path+"["+strconv.FormatUint(i, 10)+"]"); err != nil {
				return err
			}
		}
		return nil
	case planStruct:
		n, ok, err := w.mapLen()
		if err != nil {
			return err
		}
		if !ok {
			if isArray(c) {
				return fmt.Errorf("%s is an array; want a map", orWhole(path))
			}
			return w.skip()
		}
		for range n {
			key, isStr, err := w.str()
			if err != nil {
				return err
			}
			f := p.fields[key]
			if !isStr || f == nil {
				if !isStr {
					if err := w.skip(); err != nil { // the key
						return err
					}
				}
				if err := w.skip(); err != nil {
					return err
				}
				continue
			}
			if err := w.value(f, join(path, key)); err != nil {
				return err
			}
		}
		return nil
	}
	return w.skip()
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orWhole(path string) string {
	if path == "" {
		return "the value"
	}
	return path
}

// checkRange refuses an integer its destination cannot hold.
func checkRange(p *plan, neg bool, mag uint64, path string) error {
	var ok bool
	if p.kind == planUint {
		ok = !neg && (p.bits == 64 || mag <= 1<<p.bits-1)
	} else if neg {
		ok = mag <= 1<<(p.bits-1) // -mag >= -2^(bits-1)
	} else {
		ok = mag <= 1<<(p.bits-1)-1
	}
	if ok {
		return nil
	}
	s := strconv.FormatUint(mag, 10)
	if neg {
		s = "-" + s
	}
	return fmt.Errorf("%s: %s is out of range for %s", orWhole(path), s, p.name)
}

// integer reads an integer at pos as sign and magnitude. ok is false (and
// nothing is consumed) when the value there is not an integer.
func (w *intWalker) integer() (neg bool, mag uint64, ok bool, err error) {
	c := w.b[w.pos]
	var size int
	signed := false
	switch {
	case c <= 0x7f:
		w.pos++
		return false, uint64(c), true, nil
	case c >= 0xe0:
		w.pos++
		return true, uint64(-int64(int8(c))), true, nil
	case c >= 0xcc && c <= 0xcf: // uint8 .. uint64
		size = 1 << (c - 0xcc)
	case c >= 0xd0 && c <= 0xd3: // int8 .. int64
		size, signed = 1<<(c-0xd0), true
	default:
		return false, 0, false, nil
	}
	if len(w.b)-w.pos-1 < size {
		return false, 0, false, errTruncated
	}
	var u uint64
	for _, x := range w.b[w.pos+1 : w.pos+1+size] {
		u = u<<8 | uint64(x)
	}
	w.pos += 1 + size
	if signed {
		// Sign-extend from size bytes.
		shift := uint(64 - 8*size)
		s := int64(u<<shift) >> shift
		if s < 0 {
			if s == math.MinInt64 {
				return true, 1 << 63, true, nil
			}
			return true, uint64(-s), true, nil
		}
		return false, uint64(s), true, nil
	}
	return false, u, true, nil
}

// arrayLen reads an array header; ok is false (nothing consumed) if the
// value at pos is not an array.
func (w *intWalker) arrayLen() (n uint64, ok bool, err error) {
	c := w.b[w.pos]
	switch {
	case c&0xf0 == 0x90:
		w.pos++
		return uint64(c & 0x0f), true, nil
	case c == 0xdc:
		return w.length(2)
	case c == 0xdd:
		return w.length(4)
	}
	return 0, false, nil
}

// mapLen reads a map header, like arrayLen.
func (w *intWalker) mapLen() (n uint64, ok bool, err error) {
	c := w.b[w.pos]
	switch {
	case c&0xf0 == 0x80:
		w.pos++
		return uint64(c & 0x0f), true, nil
	case c == 0xde:
		return w.length(2)
	case c == 0xdf:
		return w.length(4)
	}
	return 0, false, nil
}

func isArray(c byte) bool { return c&0xf0 == 0x90 || c == 0xdc || c == 0xdd }

// length reads the size-byte big-endian length after the code at pos.
func (w *intWalker) length(size int) (uint64, bool, error) {
	if len(w.b)-w.pos-1 < size {
		return 0, false, errTruncated
	}
	var n uint64
	for _, x := range w.b[w.pos+1 : w.pos+1+size] {
		n = n<<8 | uint64(x)
	}
	w.pos += 1 + size
	return n, true, nil
}

// str reads a str or bin (what msgpack accepts as a map key; nil reads as
// ""). isStr is false, with nothing consumed, for any other value.
func (w *intWalker) str() (s string, isStr bool, err error) {
	if w.pos >= len(w.b) {
		return "", false, errTruncated
	}
	c := w.b[w.pos]
	var n uint64
	switch {
	case c == 0xc0:
		w.pos++
		return "", true, nil
	case c&0xe0 == 0xa0:
		n = uint64(c & 0x1f)
		w.pos++
	case c == 0xd9 || c == 0xc4:
		n, _, err = w.length(1)
	case c == 0xda || c == 0xc5:
		n, _, err = w.length(2)
	case c == 0xdb || c == 0xc6:
		n, _, err = w.length(4)
	default:
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	if n > uint64(len(w.b)-w.pos) {
		return "", false, errTruncated
	}
	s = string(w.b[w.pos : w.pos+int(n)])
	w.pos += int(n)
	return s, true, nil
}

// skip steps over one value, however nested, without recursion.
func (w *intWalker) skip() error {
	for left := uint64(1); left > 0; left-- {
		if w.pos >= len(w.b) {
			return errTruncated
		}
		c := w.b[w.pos]
		w.pos++
		var hdr int
		var payload uint64
		switch {
		case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
		case c <= 0x8f:
			left += 2 * uint64(c&0x0f)
		case c <= 0x9f:
			left += uint64(c & 0x0f)
		case c <= 0xbf:
			payload = uint64(c & 0x1f)
		case c == 0xc4, c == 0xd9:
			hdr = 1
		case c == 0xc5, c == 0xda:
			hdr = 2
		case c == 0xc6, c == 0xdb:
			hdr = 4
		case c >= 0xc7 && c <= 0xc9:
			hdr = 1 << (c - 0xc7)
			payload = 1 // the ext type byte
		case c == 0xca, c == 0xce, c == 0xd2:
			payload = 4
		case c == 0xcb, c == 0xcf, c == 0xd3:
			payload = 8
		case c == 0xcc, c == 0xd0:
			payload = 1
		case c == 0xcd, c == 0xd1:
			payload = 2
		case c >= 0xd4 && c <= 0xd8:
			payload = 1 + 1<<(c-0xd4)
		case c == 0xdc, c == 0xde:
			hdr = 2
		case c == 0xdd, c == 0xdf:
			hdr = 4
		default: // 0xc1
			return fmt.Errorf("invalid msgpack code %#x", c)
		}
		if hdr > 0 {
			if len(w.b)-w.pos < hdr {
				return errTruncated
			}
			var n uint64
			for _, x := range w.b[w.pos : w.pos+hdr] {
				n = n<<8 | uint64(x)
			}
			w.pos += hdr
			switch c {
			case 0xdc, 0xdd:
				left += n
			case 0xde, 0xdf:
				left += 2 * n
			default:
				payload += n
			}
		}
		if payload > uint64(len(w.b)-w.pos) {
			return errTruncated
		}
		w.pos += int(payload)
	}
	return nil
}
