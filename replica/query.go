package replica

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"iter"
	"slices"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// Row is one record a query yields: its ID and version, and its fields
// decoded into T (see crdt.Doc.Decode).
type Row[T any] struct {
	ID    string
	Heads crdt.Heads
	Value T
	// Cursor is where the query stands after this row: give it as
	// Query.After to resume there, in a later query of the same shape.
	Cursor string
}

// Query selects records of a collection, for [Select].
type Query[T any] struct {
	// Where keeps the records it returns true for; nil keeps every one.
	// It is called with each record decoded, on the goroutine that runs
	// the loop over Select, outside every lock and transaction: it may
	// do anything but must not keep v's address.
	Where func(v *T) bool

	// Index, if set, reads the records in the order of this index of
	// the collection (see Collection.EnsureIndex), selected by Eq, From
	// and To, instead of every record in ID order.
	Index string
	// Eq holds values of the index's first fields, in order: only records
	// with those values. Numbers of any type compare as float64; strings
	// and text are one kind.
	Eq []any
	// From and To bound the index's next field after Eq's: From <= value
	// < To. A nil bound is open.
	From, To any
	// Desc reads in descending order of the index (or of IDs).
	Desc bool

	// Limit stops after this many rows; 0 means no limit.
	Limit int

	// After resumes after the row whose Cursor it is; "" starts at the
	// beginning.
	After string
}

// Select streams the collection's live records that q selects, decoded
// into T, in ID order or in the order of q.Index, from their read models
// and index entries: no Automerge document is loaded.
// Records are read a page per store transaction as the loop reaches them,
// so any number fits in bounded memory, and stopping the loop stops the
// reads.
//
//	cheap := replica.Query[Product]{Where: func(p *Product) bool {
//		return p.Cat == "c7" && p.Price < 5
//	}}
//	for row, err := range replica.Select(products, cheap) {
//		if err != nil { ... }
//		fmt.Println(row.ID, row.Value.Name)
//	}
//
//	// Category c7, cheapest first, 20 at a time:
//	byCat := replica.Query[Product]{Index: "by_cat_price", Eq: []any{"c7"}, Limit: 20}
//
// What a page holds is read at one moment (see [Collection.Scan]). A
// record that does not decode into T ends the iteration with an error
// wrapping crdt.ErrType, as [Collection.Get] would fail.
func Select[T any](c *Collection, q Query[T]) iter.Seq2[Row[T], error] {
	return func(yield func(Row[T], error) bool) {
		n := 0
		var src iter.Seq2[entry, error]
		switch {
		case q.Index != "":
			src = c.indexed(q.Index, q.Eq, q.From, q.To, q.Desc, q.After)
		case q.Eq != nil || q.From != nil || q.To != nil:
			yield(Row[T]{}, fmt.Errorf("%w: Eq, From and To need an Index", ErrInvalidIndex))
			return
		case q.Desc:
			yield(Row[T]{}, fmt.Errorf("%w: Desc needs an Index", ErrInvalidIndex))
			return
		default:
			src = c.each("", q.After, false)
		}
		for e, err := range src {
			if err != nil {
				yield(Row[T]{}, err)
				return
			}
			row := Row[T]{ID: e.id, Heads: e.v.heads, Cursor: e.id}
			if e.cursor != nil {
				row.Cursor = base64.RawURLEncoding.EncodeToString(e.cursor)
			}
			if err := e.v.decode(&row.Value); err != nil {
				yield(Row[T]{}, fmt.Errorf("ferry: %s/%s: %w", c.name, e.id, err))
				return
			}
			if q.Where != nil && !q.Where(&row.Value) {
				continue
			}
			if !yield(row, nil) {
				return
			}
			if n++; q.Limit > 0 && n == q.Limit {
				return
			}
		}
	}
}

// indexed streams the live records an index query selects, in the
// index's order, a page per store transaction. Each entry is checked
// against the record's read model read in the same transaction, and
// compared with the query's bounds by the values the read model holds:
// an entry cut to indexValueBound bytes of values tells them only in
// part. Entries cut to the same prefix (a group) are read in one page,
// whatever its size, and ordered by their full values.
func (c *Collection) indexed(name string, eq []any, from, to any, desc bool, after string) iter.Seq2[entry, error] {
	return func(yield func(entry, error) bool) {
		if c.err != nil {
			yield(entry{}, c.err)
			return
		}
		c.r.idx.mu.RLock()
		defs := c.r.idx.of(c.name)
		c.r.idx.mu.RUnlock()
		i := slices.IndexFunc(defs, func(d indexDef) bool { return d.Name == name })
		if i < 0 {
			yield(entry{}, fmt.Errorf("%w: %s has no index %q", ErrInvalidIndex, c.name, name))
			return
		}
		def := defs[i]
		lo, hi, err := indexRange(c.name, def, eq, from, to)
		if err != nil {
			yield(entry{}, err)
			return
		}
		base := indexPrefix(c.name, def.Name)
		if after != "" {
			tail, err := base64.RawURLEncoding.DecodeString(after)
			if err != nil {
				yield(entry{}, fmt.Errorf("%w: bad cursor %q", ErrInvalidIndex, after))
				return
			}
			k := append(bytes.Clone(base), tail...)
			if desc {
				if bytes.Compare(k, hi) < 0 {
					hi = k // exclusive
				}
			} else if k = append(k, 0); bytes.Compare(k, lo) > 0 {
				lo = k
			}
		}
		var last []byte // the stored key the previous page ended at
		for {
			page, more, err := c.indexPage(def, base, lo, hi, desc, last)
			if err != nil {
				yield(entry{}, err)
				return
			}
			if len(page) > 0 {
				last = page[len(page)-1].stored
			}
			sel := page[:0] // filtered in place
			for _, e := range page {
				if e.id == "" {
					continue // a stale entry, checked out
				}
				if e.v.packed == nil {
					// The record's read model is lost or damaged: rebuilt
					// from its document, then checked against the entry.
					v, err := c.r.rebuildView(c.name, e.id)
					if errors.Is(err, ErrNotFound) {
						continue // purged since the page was read
					}
					if err != nil {
						yield(entry{}, err)
						return
					}
					full, ok := entryMatches(def, base, e.id, e.stored, v)
					if !ok {
						continue
					}
					e.v, e.full = v, full
				}
				if bytes.Compare(e.full, lo) < 0 || bytes.Compare(e.full, hi) >= 0 {
					continue // outside the bounds: a cut entry, or one by a long bound
				}
				e.cursor = e.full[len(base):]
				sel = append(sel, e)
			}
			orderCut(sel, desc)
			for _, e := range sel {
				if !yield(e, nil) {
					return
				}
			}
			if len(page) >= scanPage {
				c.r.mem.read(scanPage) // after a full page, as a scan: no transaction open
			}
			if !more {
				return
			}
		}
	}
}

// orderCut orders each run of entries cut to the same prefix by their
// full keys (descending with desc); the index's keys order the rest.
// Entries of a run are adjacent: no other key lies between them.
func orderCut(page []entry, desc bool) {
	for i := 0; i < len(page); {
		j := i + 1
		if page[i].cut {
			p := page[i].stored[:len(page[i].stored)-len(page[i].id)]
			for j < len(page) && page[j].cut && bytes.Equal(page[j].stored[:len(page[j].stored)-len(page[j].id)], p) {
				j++
			}
		}
		if j-i > 1 {
			slices.SortFunc(page[i:j], func(a, b entry) int {
				if desc {
					return bytes.Compare(b.full, a.full)
				}
				return bytes.Compare(a.full, b.full)
			})
		}
		i = j
	}
}

// entryMatches reports whether the stored index key is the one that read
// model v, of the live record id, gives, and returns the key the entry
// would have uncut (fullIndexKey).
func entryMatches(def indexDef, base []byte, id string, stored []byte, v view) ([]byte, bool) {
	if v.deleted || v.packed == nil {
		return nil, false
	}
	f, err := crdt.UnpackFields(v.packed, false)
	if err != nil {
		return nil, false
	}
	vals := indexValues(def, f)
	if !bytes.HasPrefix(stored, base) {
		return nil, false
	}
	rest := stored[len(base):]
	if len(vals) <= indexValueBound {
		// Uncut: the stored key is the full one.
		ok := len(rest) == len(vals)+len(id) && bytes.Equal(rest[:len(vals)], vals) && string(rest[len(vals):]) == id
		return stored, ok
	}
	if len(rest) != indexValueBound+1+len(id) || !bytes.Equal(rest[:indexValueBound], vals[:indexValueBound]) ||
		rest[indexValueBound] != ixCut || string(rest[indexValueBound+1:]) != id {
		return nil, false
	}
	return append(append(bytes.Clone(base), vals...), id...), true
}

// Where a cut entry stands. Its key holds only the first indexValueBound
// bytes of its values, so it is compared with a bound by its full key;
// the key alone tells where to start and stop reading: every entry whose
// full key is at least lo has a key at least seekFrom(lo), and every one
// whose full key is below hi has a key that is not pastEnd(hi).

// cutLen is the length of an index key cut after indexValueBound bytes
// of values.
func cutLen(base []byte) int { return len(base) + indexValueBound }

// seekFrom is where reading upward for entries of full keys >= lo starts.
func seekFrom(base, lo []byte) []byte {
	if n := cutLen(base); len(lo) > n {
		return lo[:n]
	}
	return lo
}

// pastEnd reports whether the index key k, and every key after it, has a
// full key >= hi.
func pastEnd(base, k, hi []byte) bool {
	n := cutLen(base)
	if len(hi) <= n {
		return bytes.Compare(k, hi) >= 0
	}
	return bytes.Compare(k[:min(len(k), n)], hi[:n]) > 0
}

// seekDown is where reading downward for entries of full keys < hi
// starts: a key at or above every key that is not pastEnd(hi).
func seekDown(base, hi []byte) []byte {
	n := cutLen(base)
	if len(hi) <= n {
		return hi
	}
	// An index key runs at most 1 (ixCut) + 256 (an ID) bytes past its
	// first indexValueBound bytes of values, and no ID holds 0xff.
	return append(bytes.Clone(hi[:n]), bytes.Repeat([]byte{0xff}, 1+transport.MaxRecordID+1)...)
}

// indexRange returns the keys an index query reads: from lo (included)
// to hi (excluded).
func indexRange(coll string, def indexDef, eq []any, from, to any) (lo, hi []byte, err error) {
	ranged := from != nil || to != nil
	if len(eq) > len(def.Fields) || ranged && len(eq) >= len(def.Fields) {
		return nil, nil, fmt.Errorf("%w: index %s has %d field(s); the query gives %d value(s) and a range", ErrInvalidIndex, def.Name, len(def.Fields), len(eq))
	}
	prefix := indexPrefix(coll, def.Name)
	for _, v := range eq {
		if err := indexable(v); err != nil {
			return nil, nil, err
		}
		prefix = appendIndexValue(prefix, v)
	}
	lo, hi = prefix, append(bytes.Clone(prefix), 0xff) // no key continues with 0xff: tags are small, IDs UTF-8
	if from != nil {
		if err := indexable(from); err != nil {
			return nil, nil, err
		}
		lo = appendIndexValue(bytes.Clone(prefix), from)
	}
	if to != nil {
		if err := indexable(to); err != nil {
			return nil, nil, err
		}
		hi = appendIndexValue(bytes.Clone(prefix), to)
	}
	return lo, hi, nil
}

// indexPage reads up to a page of entries of full keys in [lo, hi), in
// order or in reverse (desc), after the stored key last (nil: from the
// start), with each record's read model, in one transaction. more is
// false once no entry is left. An entry that does not match its record's
// read model (which a write replaces in the transaction that changes it,
// so this only follows damage) comes with an empty id. A page goes on
// past its size to the end of a group of entries cut to one prefix, so
// that the group is ordered whole. An entry may be outside [lo, hi): the
// caller compares its full key.
func (c *Collection) indexPage(def indexDef, base, lo, hi []byte, desc bool, last []byte) (page []entry, more bool, err error) {
	err = c.r.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: base, Reverse: desc})
		defer it.Close()
		switch {
		case desc && last != nil:
			it.Seek(last)
		case desc:
			it.Seek(seekDown(base, hi))
		case last != nil:
			it.Seek(append(bytes.Clone(last), 0))
		default:
			it.Seek(seekFrom(base, lo))
		}
		var group []byte // the prefix of the last entry, if it was cut
		for ; it.Valid(); it.Next() {
			k := it.Item().Key()
			if desc {
				if last != nil && bytes.Compare(k, last) >= 0 || pastEnd(base, k, hi) {
					continue
				}
				if bytes.Compare(k, seekFrom(base, lo)) < 0 {
					return nil
				}
			} else if pastEnd(base, k, hi) {
				return nil
			}
			if len(page) >= scanPage && (group == nil || !bytes.HasPrefix(k, group)) {
				more = true
				return nil
			}
			e := entry{stored: bytes.Clone(k)}
			id, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			group = nil
			if e.cut = cutEntry(base, e.stored, string(id)); e.cut {
				group = e.stored[:cutLen(base)]
			}
			v, ok, err := readView(txn, c.name, string(id))
			if err != nil {
				return err
			}
			switch {
			case ok:
				if full, match := entryMatches(def, base, string(id), e.stored, v); match {
					e.id, e.v, e.full = string(id), v, full
				}
			default:
				// No read model, or a damaged one: if the record exists,
				// the caller rebuilds it (a nil v.packed).
				if _, exists, err := readMeta(txn, c.name, string(id)); err != nil {
					return err
				} else if exists {
					e.id = string(id)
				}
			}
			page = append(page, e)
		}
		return nil
	})
	return page, more, err
}
