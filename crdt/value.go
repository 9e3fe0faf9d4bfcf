package crdt

import (
	"bytes"
	"fmt"
	"math"
	"reflect"
	"time"
	"unicode/utf8"

	"github.com/automerge/automerge-go"
)

// Text is a collaborative string: concurrent edits to it merge character by
// character. A plain Go string field is a single value: concurrent writes to
// it conflict. Use Text for prose that several people edit.
type Text string

// Counter is an integer that replicas add to rather than overwrite:
// concurrent increments all count.
type Counter int64

// fromAM converts an automerge value into Go values, recursively. typed keeps
// Text distinct from string.
func fromAM(v *automerge.Value, typed bool) (any, error) {
	switch v.Kind() {
	case automerge.KindVoid, automerge.KindNull, automerge.KindUnknown:
		return nil, nil
	case automerge.KindBool:
		return v.Bool(), nil
	case automerge.KindStr:
		return v.Str(), nil
	case automerge.KindBytes:
		return bytes.Clone(v.Bytes()), nil
	case automerge.KindFloat64:
		return v.Float64(), nil
	case automerge.KindInt64:
		return v.Int64(), nil
	case automerge.KindUint64:
		return v.Uint64(), nil
	case automerge.KindTime:
		return v.Time().UTC(), nil
	case automerge.KindCounter:
		n, err := v.Counter().Get()
		if err != nil {
			return nil, err
		}
		if !typed {
			return n, nil
		}
		return Counter(n), nil
	case automerge.KindText:
		s, err := v.Text().Get()
		if err != nil {
			return nil, err
		}
		if typed {
			return Text(s), nil
		}
		return s, nil
	case automerge.KindMap:
		vals, err := v.Map().Values()
		if err != nil {
			return nil, err
		}
		out := make(map[string]any, len(vals))
		for k, mv := range vals {
			if out[k], err = fromAM(mv, typed); err != nil {
				return nil, err
			}
		}
		return out, nil
	case automerge.KindList:
		vals, err := v.List().Values()
		if err != nil {
			return nil, err
		}
		out := make([]any, len(vals))
		for i, lv := range vals {
			if out[i], err = fromAM(lv, typed); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: unknown automerge kind %v", ErrType, v.Kind())
}

// normalize converts a Go value into the forms a record holds (see the list
// above), so writes and comparisons see one representation. Signed integers
// become int64 and unsigned uint64 (automerge-go would make them float64,
// which JavaScript readers see the same way but Go readers would not).
func normalize(v any) (any, error) {
	return normalizeValue(reflect.ValueOf(v), 0)
}

const maxDepth = 64

// normalizeValue turns a Go value into the plain values a record holds
// (see the package documentation), checking what Automerge cannot store.
func normalizeValue(rv reflect.Value, depth int) (any, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("%w: nested deeper than %d", ErrType, maxDepth)
	}
	if !rv.IsValid() {
		return nil, nil
	}
	switch x := rv.Interface().(type) {
	case Text:
		if !utf8.ValidString(string(x)) {
			return nil, fmt.Errorf("%w: text is not valid UTF-8", ErrType)
		}
		return x, nil
	case Counter, time.Time:
		if t, ok := x.(time.Time); ok {
			return t.UTC().Truncate(time.Millisecond), nil
		}
		return x, nil
	case []byte:
		return bytes.Clone(x), nil
	}
	switch rv.Kind() {
	case reflect.Bool:
		return rv.Bool(), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return rv.Int(), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return rv.Uint(), nil
	case reflect.Float32, reflect.Float64:
		f := rv.Float()
		if math.IsNaN(f) {
			// NaN never equals itself, so a record holding it would look
			// changed on every comparison.
			return nil, fmt.Errorf("%w: NaN", ErrType)
		}
		return f, nil
	case reflect.String:
		if !utf8.ValidString(rv.String()) {
			return nil, fmt.Errorf("%w: string is not valid UTF-8", ErrType)
		}
		return rv.String(), nil
	case reflect.Interface, reflect.Pointer:
		if rv.IsNil() {
			return nil, nil
		}
		return normalizeValue(rv.Elem(), depth+1)
	case reflect.Slice, reflect.Array:
		return normalizeList(rv, depth)
	case reflect.Map:
		return normalizeMap(rv, depth)
	case reflect.Struct:
		return structToMap(rv, depth)
	}
	return nil, fmt.Errorf("%w: cannot store %s", ErrType, rv.Type())
}

// normalizeList turns a slice or array into []any, or into []byte for
// bytes; a nil slice is nil.
func normalizeList(rv reflect.Value, depth int) (any, error) {
	if rv.Kind() == reflect.Slice && rv.IsNil() {
		return nil, nil
	}
	if rv.Type().Elem().Kind() == reflect.Uint8 {
		b := make([]byte, rv.Len())
		reflect.Copy(reflect.ValueOf(b), rv)
		return b, nil
	}
	out := make([]any, rv.Len())
	for i := range out {
		var err error
		if out[i], err = normalizeValue(rv.Index(i), depth+1); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// normalizeMap turns a map with string keys into map[string]any; a nil map
// is nil.
func normalizeMap(rv reflect.Value, depth int) (any, error) {
	if rv.Type().Key().Kind() != reflect.String {
		return nil, fmt.Errorf("%w: map keys must be strings, not %s", ErrType, rv.Type().Key())
	}
	if rv.IsNil() {
		return nil, nil
	}
	out := make(map[string]any, rv.Len())
	it := rv.MapRange()
	for it.Next() {
		if !utf8.ValidString(it.Key().String()) {
			return nil, fmt.Errorf("%w: map key %q is not valid UTF-8", ErrType, it.Key().String())
		}
		v, err := normalizeValue(it.Value(), depth+1)
		if err != nil {
			return nil, err
		}
		out[it.Key().String()] = v
	}
	return out, nil
}

// toAM converts a normalized value into what automerge-go writes.
func toAM(v any) any {
	switch x := v.(type) {
	case Text:
		return automerge.NewText(string(x))
	case Counter:
		return automerge.NewCounter(int64(x))
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			if _, skip := e.(omitted); !skip {
				m[k] = toAM(e)
			}
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = toAM(e)
		}
		return l
	}
	return v
}

// Equal reports whether two values read from or written to records are the
// same. Text equals an identical string (JavaScript writes strings as text).
func Equal(a, b any) bool {
	switch x := a.(type) {
	case Text:
		return equalString(string(x), b)
	case string:
		return equalString(x, b)
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !Equal(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !Equal(x[i], y[i]) {
				return false
			}
		}
		return true
	case []byte:
		y, ok := b.([]byte)
		return ok && bytes.Equal(x, y)
	case time.Time:
		y, ok := b.(time.Time)
		return ok && x.Equal(y)
	}
	return a == b
}

func equalString(s string, b any) bool {
	switch y := b.(type) {
	case string:
		return s == y
	case Text:
		return s == string(y)
	}
	return false
}

// kindOf names the merge behaviour of a value: two sides that both edited a
// value of a mergeable kind (map, list, text, counter) that both inherited
// from the base merge by CRDT rules instead of conflicting.
func kindOf(v any) string {
	switch v.(type) {
	case map[string]any:
		return "map"
	case []any:
		return "list"
	case Text:
		return "text"
	case Counter:
		return "counter"
	}
	return "scalar"
}
