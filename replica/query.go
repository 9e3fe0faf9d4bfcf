package replica

import (
	"fmt"
	"iter"

	"github.com/ferrysync/ferry/crdt"
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

	// Limit stops after this many rows; 0 means no limit.
	Limit int

	// After resumes after the row whose Cursor it is; "" starts at the
	// beginning.
	After string
}

// Select streams the collection's records that q selects, decoded into T,
// in ID order, from their read models: no Automerge document is loaded.
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
// What a page holds is read at one moment (see [Collection.Scan]). A
// record that does not decode into T ends the iteration with an error
// wrapping crdt.ErrType, as [Collection.Get] would fail.
func Select[T any](c *Collection, q Query[T]) iter.Seq2[Row[T], error] {
	return func(yield func(Row[T], error) bool) {
		n := 0
		for e, err := range c.each("", q.After, false) {
			if err != nil {
				yield(Row[T]{}, err)
				return
			}
			row := Row[T]{ID: e.id, Heads: e.v.heads, Cursor: e.id}
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
