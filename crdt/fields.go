package crdt

import (
	"fmt"
	"reflect"
	"unicode/utf8"

	"github.com/automerge/automerge-go"
)

// TombstoneKey is the root field that marks a deleted record. It is written
// like any field, so a delete racing an edit shows up in [Diff3].
const TombstoneKey = "$deleted"

// Path addresses a value inside a record: string elements are map keys,
// int elements list indexes. Path{"address", "city"} is a nested field.
type Path []any

func (p Path) check() error {
	if len(p) == 0 {
		return fmt.Errorf("%w: empty path", ErrPath)
	}
	if _, ok := p[0].(string); !ok {
		return fmt.Errorf("%w: a path starts with a field name, not %T", ErrPath, p[0])
	}
	for _, e := range p {
		switch x := e.(type) {
		case string:
			if !utf8.ValidString(x) {
				return fmt.Errorf("%w: key %q is not UTF-8", ErrPath, x)
			}
		case int:
			if x < 0 {
				return fmt.Errorf("%w: negative index %d", ErrPath, x)
			}
		default:
			return fmt.Errorf("%w: element %v of type %T (want string or int)", ErrPath, e, e)
		}
	}
	return nil
}

// lookup walks p and returns the automerge value there (KindVoid if absent).
func (d *Doc) lookup(p Path) (*automerge.Value, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	v, err := d.live().Path(p...).Get()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPath, err)
	}
	return v, nil
}

// Get returns the value at path (one of the values the package
// documentation lists), or nil if nothing is there. Text reads as a string.
func (d *Doc) Get(path Path) (any, error) {
	v, _, err := d.Lookup(path)
	return v, err
}

// Lookup is [Doc.Get] that also reports whether the value exists.
func (d *Doc) Lookup(path Path) (any, bool, error) {
	return d.lookupAs(path, false)
}

// GetTyped is [Doc.Get] that keeps Text distinct from a plain string.
func (d *Doc) GetTyped(path Path) (any, bool, error) {
	return d.lookupAs(path, true)
}

func (d *Doc) lookupAs(p Path, typed bool) (any, bool, error) {
	v, err := d.lookup(p)
	if err != nil {
		return nil, false, err
	}
	if v.IsVoid() {
		return nil, false, nil
	}
	out, err := fromAM(v, typed)
	return out, true, err
}

// Fields returns the record's fields as plain Go values (without the
// tombstone marker).
func (d *Doc) Fields() (map[string]any, error) { return d.fields(false) }

// TypedFields is [Doc.Fields] with kinds kept: collaborative text reads as
// [Text] and counters as [Counter], so that writing the map back (with
// [Doc.Put]) keeps them collaborative.
func (d *Doc) TypedFields() (map[string]any, error) { return d.fields(true) }

func (d *Doc) fields(typed bool) (map[string]any, error) {
	v, err := fromAM(d.live().Root(), typed)
	if err != nil {
		return nil, err
	}
	m, _ := v.(map[string]any)
	if m == nil {
		m = map[string]any{}
	}
	delete(m, TombstoneKey)
	return m, nil
}

// Set writes v at path, creating missing parent maps. Only what differs from
// the current value is written: a map is updated key by key, a list element
// by element, Text by a splice, a Counter by an increment, so that
// concurrent edits elsewhere in the value survive the merge.
func (d *Doc) Set(path Path, v any) error {
	nv, err := normalize(v)
	if err != nil {
		return err
	}
	if err := path.check(); err != nil {
		return err
	}
	parent, last := path[:len(path)-1], path[len(path)-1]
	if len(parent) == 0 {
		return d.writeKey(d.live().RootMap(), last.(string), nv)
	}
	pv, err := d.lookup(parent)
	if err != nil {
		return err
	}
	switch key := last.(type) {
	case string:
		if pv.IsVoid() {
			// Let automerge-go create the missing parent maps.
			return d.live().Path(path...).Set(toAM(nv))
		}
		if pv.Kind() != automerge.KindMap {
			return fmt.Errorf("%w: %v is a %v, not a map", ErrPath, parent, pv.Kind())
		}
		return d.writeKey(pv.Map(), key, nv)
	default:
		idx := key.(int)
		if pv.Kind() != automerge.KindList {
			return fmt.Errorf("%w: %v is not a list", ErrPath, parent)
		}
		l := pv.List()
		switch {
		case idx < l.Len():
			return d.writeIndex(l, idx, nv)
		case idx == l.Len():
			return wrapAM(l.Append(toAM(nv)))
		}
		return fmt.Errorf("%w: index %d past the end of a list of %d", ErrPath, idx, l.Len())
	}
}

// Delete removes the value at path: a map key, or a list element.
func (d *Doc) Delete(path Path) error {
	p := path
	if err := p.check(); err != nil {
		return err
	}
	parent, last := p[:len(p)-1], p[len(p)-1]
	var pv *automerge.Value
	if len(parent) == 0 {
		pv = d.live().Root()
	} else {
		var err error
		if pv, err = d.lookup(parent); err != nil {
			return err
		}
	}
	switch {
	case pv.IsVoid():
		return nil
	case pv.Kind() == automerge.KindMap:
		key, ok := last.(string)
		if !ok {
			return fmt.Errorf("%w: %v is a map; index with a string", ErrPath, parent)
		}
		return wrapAM(pv.Map().Delete(key))
	case pv.Kind() == automerge.KindList:
		idx, ok := last.(int)
		if !ok || idx >= pv.List().Len() {
			return fmt.Errorf("%w: no element %v in list %v", ErrPath, last, parent)
		}
		return wrapAM(pv.List().Delete(idx))
	}
	return fmt.Errorf("%w: %v is neither a map nor a list", ErrPath, parent)
}

// Increment adds delta to the Counter at path, creating it (from zero) if
// the field is absent.
func (d *Doc) Increment(path Path, delta int64) error {
	v, err := d.lookup(path)
	if err != nil {
		return err
	}
	switch v.Kind() {
	case automerge.KindVoid:
		return d.Set(path, Counter(delta))
	case automerge.KindCounter:
		return wrapAM(v.Counter().Inc(delta))
	}
	return fmt.Errorf("%w: %v holds a %v, not a counter", ErrType, path, v.Kind())
}

// SpliceText deletes del runes at rune position pos of the Text at path and
// inserts ins there. The field is made Text (empty) if absent.
func (d *Doc) SpliceText(path Path, pos, del int, ins string) error {
	if !utf8.ValidString(ins) {
		return fmt.Errorf("%w: text is not valid UTF-8", ErrType)
	}
	v, err := d.lookup(path)
	if err != nil {
		return err
	}
	if v.IsVoid() {
		if err := d.Set(path, Text("")); err != nil {
			return err
		}
		if v, err = d.lookup(path); err != nil {
			return err
		}
	}
	if v.Kind() != automerge.KindText {
		return fmt.Errorf("%w: %v holds a %v, not text", ErrType, path, v.Kind())
	}
	t := v.Text()
	if pos < 0 || del < 0 || pos+del > t.Len() {
		return fmt.Errorf("%w: splice [%d,%d) outside text of %d runes", ErrPath, pos, pos+del, t.Len())
	}
	return wrapAM(t.Splice(pos, del, ins))
}

// InsertAt inserts vals into the list at path before index idx (idx equal
// to the length appends). The list is created if absent.
func (d *Doc) InsertAt(path Path, idx int, vals ...any) error {
	nvs := make([]any, len(vals))
	for i, v := range vals {
		nv, err := normalize(v)
		if err != nil {
			return err
		}
		nvs[i] = toAM(nv)
	}
	v, err := d.lookup(path)
	if err != nil {
		return err
	}
	if v.IsVoid() {
		if idx != 0 {
			return fmt.Errorf("%w: index %d in a missing list", ErrPath, idx)
		}
		return d.Set(path, vals)
	}
	if v.Kind() != automerge.KindList {
		return fmt.Errorf("%w: %v holds a %v, not a list", ErrType, path, v.Kind())
	}
	l := v.List()
	if idx < 0 || idx > l.Len() {
		return fmt.Errorf("%w: index %d outside a list of %d", ErrPath, idx, l.Len())
	}
	return wrapAM(l.Insert(idx, nvs...))
}

// Deleted reports whether the record is a tombstone.
func (d *Doc) Deleted() bool {
	if d.def != nil {
		if deleted, _, ok := d.readDeferred(); ok {
			return deleted
		}
	}
	v, err := d.live().RootMap().Get(TombstoneKey)
	return err == nil && v.Kind() == automerge.KindBool && v.Bool()
}

// SetDeleted marks the record deleted (a tombstone) or restores it.
// Its fields are kept, so a restore brings them back.
func (d *Doc) SetDeleted(deleted bool) error {
	if d.Deleted() == deleted {
		return nil
	}
	if !deleted {
		return wrapAM(d.live().RootMap().Delete(TombstoneKey))
	}
	return wrapAM(d.live().RootMap().Set(TombstoneKey, true))
}

// writeKey writes nv at m[key], touching only what differs.
func (d *Doc) writeKey(m *automerge.Map, key string, nv any) error {
	if _, del := nv.(omitted); del {
		cur, err := m.Get(key)
		if err != nil || cur.IsVoid() {
			return wrapAM(err)
		}
		return wrapAM(m.Delete(key))
	}
	cur, err := m.Get(key)
	if err != nil {
		return wrapAM(err)
	}
	done, err := d.writeInPlace(cur, nv)
	if done || err != nil {
		return err
	}
	return wrapAM(m.Set(key, toAM(nv)))
}

// writeIndex writes nv at l[idx], touching only what differs.
func (d *Doc) writeIndex(l *automerge.List, idx int, nv any) error {
	cur, err := l.Get(idx)
	if err != nil {
		return wrapAM(err)
	}
	done, err := d.writeInPlace(cur, nv)
	if done || err != nil {
		return err
	}
	return wrapAM(l.Set(idx, toAM(nv)))
}

// writeInPlace updates the object cur to hold nv without replacing it,
// where kinds allow. It reports whether it did (or nothing needed doing).
func (d *Doc) writeInPlace(cur *automerge.Value, nv any) (bool, error) {
	switch cur.Kind() {
	case automerge.KindVoid:
		return false, nil
	case automerge.KindMap:
		x, ok := nv.(map[string]any)
		if !ok {
			return false, nil
		}
		return true, d.writeMap(cur.Map(), x, true)
	case automerge.KindList:
		x, ok := nv.([]any)
		if !ok {
			return false, nil
		}
		return true, d.writeList(cur.List(), x)
	case automerge.KindText:
		var s string
		switch x := nv.(type) {
		case Text:
			s = string(x)
		case string:
			// A plain string written over text (as JavaScript writes every
			// string) edits the text, keeping it collaborative.
			s = x
		default:
			return false, nil
		}
		return true, spliceTo(cur.Text(), s)
	case automerge.KindCounter:
		// An int64 written over a counter (counters read as int64) sets it
		// by incrementing, keeping concurrent increments additive.
		var want int64
		switch x := nv.(type) {
		case Counter:
			want = int64(x)
		case int64:
			want = x
		default:
			return false, nil
		}
		n, err := cur.Counter().Get()
		if err != nil {
			return true, wrapAM(err)
		}
		if delta := want - n; delta != 0 {
			return true, wrapAM(cur.Counter().Inc(delta))
		}
		return true, nil
	}
	old, err := fromAM(cur, true)
	if err != nil {
		return true, err
	}
	return kindOf(nv) == "scalar" && sameScalar(old, nv), nil
}

// writeMap makes m hold x. With exact, keys of m missing from x are deleted.
func (d *Doc) writeMap(m *automerge.Map, x map[string]any, exact bool) error {
	if m.Len() == 0 {
		// Nothing to compare with or keep (a new record, a map just
		// made): one call into Automerge instead of a read per key.
		for k, v := range x {
			if _, del := v.(omitted); del {
				continue
			}
			if err := m.Set(k, toAM(v)); err != nil {
				return wrapAM(err)
			}
		}
		return nil
	}
	for k, v := range x {
		if err := d.writeKey(m, k, v); err != nil {
			return err
		}
	}
	if !exact {
		return nil
	}
	keys, err := m.Keys()
	if err != nil {
		return wrapAM(err)
	}
	for _, k := range keys {
		if _, keep := x[k]; !keep {
			if err := m.Delete(k); err != nil {
				return wrapAM(err)
			}
		}
	}
	return nil
}

// writeList makes l hold x: elements kept by a minimal diff stay, changed
// ones are updated in place where they line up, and the rest inserted or
// deleted, so that concurrent edits to untouched elements survive.
func (d *Doc) writeList(l *automerge.List, x []any) error {
	vals, err := l.Values()
	if err != nil {
		return wrapAM(err)
	}
	old := make([]any, len(vals))
	for i, v := range vals {
		if old[i], err = fromAM(v, true); err != nil {
			return err
		}
	}
	hs := diffSeq(len(old), len(x), func(i, j int) bool {
		return Equal(old[i], x[j]) && kindOf(old[i]) == kindOf(x[j])
	})
	// Last hunk first, so the positions of earlier ones still hold.
	for i := len(hs) - 1; i >= 0; i-- {
		h := hs[i]
		common := min(h.del, h.ins)
		for j := 0; j < common; j++ {
			if err := d.writeIndex(l, h.pos+j, x[h.at+j]); err != nil {
				return err
			}
		}
		for j := common; j < h.del; j++ {
			if err := l.Delete(h.pos + common); err != nil {
				return wrapAM(err)
			}
		}
		if h.ins > common {
			ins := make([]any, 0, h.ins-common)
			for _, v := range x[h.at+common : h.at+h.ins] {
				ins = append(ins, toAM(v))
			}
			if err := l.Insert(h.pos+common, ins...); err != nil {
				return wrapAM(err)
			}
		}
	}
	return nil
}

// spliceTo edits t to read s, splicing only the runes a minimal diff
// changes.
func spliceTo(t *automerge.Text, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: text is not valid UTF-8", ErrType)
	}
	curS, err := t.Get()
	if err != nil {
		return wrapAM(err)
	}
	if curS == s {
		return nil
	}
	a, b := []rune(curS), []rune(s)
	hs := diffSeq(len(a), len(b), func(i, j int) bool { return a[i] == b[j] })
	for i := len(hs) - 1; i >= 0; i-- {
		h := hs[i]
		if err := t.Splice(h.pos, h.del, string(b[h.at:h.at+h.ins])); err != nil {
			return wrapAM(err)
		}
	}
	return nil
}

// sameScalar reports whether writing nv over old would change nothing,
// including its type (an int64 is not rewritten as the float64 it equals).
func sameScalar(old, nv any) bool {
	return reflect.TypeOf(old) == reflect.TypeOf(nv) && Equal(old, nv)
}

func wrapAM(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("crdt: %w", err)
}
