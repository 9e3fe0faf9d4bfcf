package crdt

import (
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"time"
)

// Struct mapping follows encoding/json's conventions with the tag `ferry`:
//
//	type Product struct {
//		ID    string   `ferry:"-"`            // not stored
//		Name  string   `ferry:"name"`         // stored as "name"
//		Notes crdt.Text `ferry:"notes"`       // collaborative text
//		Stock crdt.Counter `ferry:"stock"`    // concurrent increments add up
//		Tags  []string `ferry:"tags,omitempty"` // absent when empty
//	}
//
// Untagged exported fields are stored under their Go name; embedded structs
// are flattened.

// omitted marks an omitempty field with a zero value: Put deletes the key.
type omitted struct{}

type fieldInfo struct {
	name      string
	index     []int
	omitEmpty bool
}

var fieldCache sync.Map // reflect.Type -> []fieldInfo

func structFields(t reflect.Type) []fieldInfo {
	if fs, ok := fieldCache.Load(t); ok {
		return fs.([]fieldInfo)
	}
	var fs []fieldInfo
	var walk func(t reflect.Type, index []int)
	walk = func(t reflect.Type, index []int) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("ferry")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			idx := append(append([]int(nil), index...), i)
			if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
				walk(f.Type, idx)
				continue
			}
			if !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fs = append(fs, fieldInfo{name: name, index: idx, omitEmpty: strings.Contains(","+opts+",", ",omitempty,")})
		}
	}
	walk(t, nil)
	fieldCache.Store(t, fs)
	return fs
}

func structToMap(rv reflect.Value, depth int) (map[string]any, error) {
	out := map[string]any{}
	for _, f := range structFields(rv.Type()) {
		fv := rv.FieldByIndex(f.index)
		if f.omitEmpty && fv.IsZero() {
			out[f.name] = omitted{}
			continue
		}
		v, err := normalizeValue(fv, depth+1)
		if err != nil {
			return nil, fmt.Errorf("field %s: %w", f.name, err)
		}
		out[f.name] = v
	}
	return out, nil
}

// Put writes the fields of v (a struct, a pointer to one, or a map with
// string keys) into the record. Only values that differ are written (see
// [Doc.Set]). Top-level fields that v does not name are left alone, so an
// older app version does not erase fields a newer one added; a nested map
// value, though, replaces the nested map's contents exactly. An omitempty
// field with a zero value deletes its key.
func (d *Doc) Put(v any) error {
	nv, err := normalize(v)
	if err != nil {
		return err
	}
	m, ok := nv.(map[string]any)
	if !ok {
		return fmt.Errorf("%w: Put takes a struct or a map, not %T", ErrType, v)
	}
	if _, bad := m[TombstoneKey]; bad {
		return fmt.Errorf("%w: %q is reserved", ErrType, TombstoneKey)
	}
	return d.writeMap(d.live().RootMap(), m, false)
}

// Decode reads the record into out, a pointer to a struct or to a map with
// string keys. Fields absent from the record keep their zero value; a field
// that holds the wrong type is an [ErrType]. Numbers convert between Go
// numeric types when the value fits.
func (d *Doc) Decode(out any) error {
	rv := reflect.ValueOf(out)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("%w: Decode needs a non-nil pointer, not %T", ErrType, out)
	}
	fields, err := d.fields(true)
	if err != nil {
		return err
	}
	return decodeInto(rv.Elem(), fields, "")
}

// DecodeValue converts a value read from a record (as [Doc.Get] returns it)
// into out, a pointer, with [Doc.Decode]'s rules.
func DecodeValue(v any, out any) error {
	rv := reflect.ValueOf(out)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("%w: DecodeValue needs a non-nil pointer, not %T", ErrType, out)
	}
	return decodeInto(rv.Elem(), v, "")
}

var timeType = reflect.TypeOf(time.Time{})

func decodeInto(rv reflect.Value, v any, at string) error {
	if v == nil {
		rv.SetZero()
		return nil
	}
	mismatch := func() error {
		return fmt.Errorf("%w: field %q holds %T, cannot decode into %s", ErrType, strings.TrimPrefix(at, "."), v, rv.Type())
	}
	switch rv.Kind() {
	case reflect.Pointer:
		p := reflect.New(rv.Type().Elem())
		if err := decodeInto(p.Elem(), v, at); err != nil {
			return err
		}
		rv.Set(p)
		return nil
	case reflect.Interface:
		if rv.NumMethod() != 0 {
			return mismatch()
		}
		rv.Set(reflect.ValueOf(plain(v)))
		return nil
	case reflect.Struct:
		if rv.Type() == timeType {
			t, ok := v.(time.Time)
			if !ok {
				return mismatch()
			}
			rv.Set(reflect.ValueOf(t))
			return nil
		}
		m, ok := v.(map[string]any)
		if !ok {
			return mismatch()
		}
		for _, f := range structFields(rv.Type()) {
			fv, ok := m[f.name]
			if !ok {
				continue
			}
			if err := decodeInto(rv.FieldByIndex(f.index), fv, at+"."+f.name); err != nil {
				return err
			}
		}
		return nil
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok || rv.Type().Key().Kind() != reflect.String {
			return mismatch()
		}
		out := reflect.MakeMapWithSize(rv.Type(), len(m))
		for k, mv := range m {
			ev := reflect.New(rv.Type().Elem()).Elem()
			if err := decodeInto(ev, mv, at+"."+k); err != nil {
				return err
			}
			out.SetMapIndex(reflect.ValueOf(k).Convert(rv.Type().Key()), ev)
		}
		rv.Set(out)
		return nil
	case reflect.Slice:
		if b, ok := v.([]byte); ok && rv.Type().Elem().Kind() == reflect.Uint8 {
			rv.Set(reflect.ValueOf(b).Convert(rv.Type()))
			return nil
		}
		l, ok := v.([]any)
		if !ok {
			return mismatch()
		}
		out := reflect.MakeSlice(rv.Type(), len(l), len(l))
		for i, e := range l {
			if err := decodeInto(out.Index(i), e, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
		rv.Set(out)
		return nil
	case reflect.Array:
		l, ok := v.([]any)
		if !ok {
			return mismatch()
		}
		for i := 0; i < rv.Len() && i < len(l); i++ {
			if err := decodeInto(rv.Index(i), l[i], fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
		return nil
	case reflect.String:
		switch x := v.(type) {
		case string:
			rv.SetString(x)
		case Text:
			rv.SetString(string(x))
		default:
			return mismatch()
		}
		return nil
	case reflect.Bool:
		b, ok := v.(bool)
		if !ok {
			return mismatch()
		}
		rv.SetBool(b)
		return nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := asInt(v)
		if !ok || rv.OverflowInt(n) {
			return mismatch()
		}
		rv.SetInt(n)
		return nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := asUint(v)
		if !ok || rv.OverflowUint(n) {
			return mismatch()
		}
		rv.SetUint(n)
		return nil
	case reflect.Float32, reflect.Float64:
		f, ok := asFloat(v)
		if !ok {
			return mismatch()
		}
		rv.SetFloat(f)
		return nil
	}
	return mismatch()
}

func asInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case Counter:
		return int64(x), true
	case uint64:
		return int64(x), x <= math.MaxInt64
	case float64:
		return int64(x), x == math.Trunc(x) && x >= math.MinInt64 && x < math.MaxInt64
	}
	return 0, false
}

func asUint(v any) (uint64, bool) {
	switch x := v.(type) {
	case uint64:
		return x, true
	case int64:
		return uint64(x), x >= 0
	case Counter:
		return uint64(x), x >= 0
	case float64:
		return uint64(x), x == math.Trunc(x) && x >= 0 && x < math.MaxUint64
	}
	return 0, false
}

func asFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	case Counter:
		return float64(x), true
	}
	return 0, false
}

// clone deep-copies maps, lists and byte slices, keeping kinds, so that a
// caller may keep or change what it is given without touching the source.
func clone(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = clone(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = clone(e)
		}
		return out
	case []byte:
		return append([]byte(nil), x...)
	}
	return v
}

// plain strips the Text and Counter types for callers that asked for any.
func plain(v any) any {
	switch x := v.(type) {
	case Text:
		return string(x)
	case Counter:
		return int64(x)
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = plain(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = plain(e)
		}
		return out
	}
	return v
}
