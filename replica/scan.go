package replica

import (
	"bytes"
	"errors"
	"iter"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// Record is a record read by [Collection.Scan].
type Record struct {
	ID      string
	Deleted bool
	Heads   crdt.Heads
	Fields  map[string]any
}

// Decode converts the record's fields into out, as [Collection.Get] does.
func (r Record) Decode(out any) error { return crdt.DecodeValue(r.Fields, out) }

// ScanOptions select records for [Collection.Scan].
type ScanOptions struct {
	Prefix  string // only IDs with this prefix
	After   string // only IDs after this one (to resume a scan)
	Limit   int    // at most this many; 0 means no limit
	Deleted bool   // include tombstones
}

// scanPage is how many records a scan reads per store transaction.
const scanPage = 256

// Scan returns the records in ID order (Insert's UUIDv7 IDs sort in
// creation order), as an iterator over their read models: records are
// read a page at a time as the loop reaches them, so a collection of any
// size is scanned in bounded memory, and stopping the loop stops the scan.
//
//	for rec, err := range products.Scan(replica.ScanOptions{}) {
//		if err != nil { ... }
//		var p Product
//		rec.Decode(&p)
//	}
//
// Each page is read at one moment: its records are as they were then, all
// of them at once (a unit of work is seen whole or not at all within a
// page); a record changed after its page was read is seen as it was. An
// error ends the iteration after it is yielded. [Select] decodes records
// into a Go type as it reads them, with a predicate.
func (c *Collection) Scan(o ScanOptions) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		n := 0
		for e, err := range c.each(o.Prefix, o.After, o.Deleted) {
			if err != nil {
				yield(Record{}, err)
				return
			}
			f, err := e.v.plainFields()
			if err != nil {
				yield(Record{}, err)
				return
			}
			if !yield(Record{ID: e.id, Deleted: e.v.deleted, Heads: e.v.heads, Fields: f}, nil) {
				return
			}
			if n++; o.Limit > 0 && n == o.Limit {
				return
			}
		}
	}
}

// entry is one record a scan read: its ID and its read model.
type entry struct {
	id     string
	v      view
	cursor []byte // where an index query stands: the entry's full key past the index's prefix

	// An index query's entry: its key as stored, whether its values are
	// cut (see indexValueBound), and its key uncut (fullIndexKey).
	stored, full []byte
	cut          bool
}

// each streams the collection's records with IDs that have idPrefix,
// after the ID after, in ID order, from their read models, one page per
// store transaction; nothing runs under a lock or inside a transaction
// while the caller's loop does. Tombstones come only with deleted. A
// record whose read model is missing or damaged has it rebuilt from its
// document (and stored again). An error
// ends the stream after it is yielded.
func (c *Collection) each(idPrefix, after string, deleted bool) iter.Seq2[entry, error] {
	return func(yield func(entry, error) bool) {
		if c.err != nil {
			yield(entry{}, c.err)
			return
		}
		for {
			page, err := c.readPage(idPrefix, after, scanPage, deleted)
			if err != nil {
				yield(entry{}, err)
				return
			}
			for _, e := range page {
				if e.v.packed == nil {
					v, err := c.r.rebuildView(c.name, e.id)
					if errors.Is(err, ErrNotFound) {
						continue // purged since the page was read
					}
					if err != nil {
						yield(entry{}, err)
						return
					}
					if v.deleted && !deleted {
						continue
					}
					e.v = v
				}
				if !yield(e, nil) {
					return
				}
			}
			if len(page) < scanPage {
				return
			}
			after = page[len(page)-1].id
			c.r.mem.read(scanPage) // between pages: no transaction open
		}
	}
}

// readPage reads up to limit records with IDs that have prefix, after the
// ID after, from their read models, in one transaction. It walks the
// records' metas (every stored record has one, and they are what a record
// is) beside the read models, in step, keys only: a record whose read
// model is missing (lost to damage) is listed too. Such a record, and one
// whose read model is damaged, comes with a nil v.packed, for the caller
// to rebuild from its document.
func (c *Collection) readPage(idPrefix, after string, limit int, deleted bool) ([]entry, error) {
	var page []entry
	err := c.r.view(func(txn *badger.Txn) error {
		metas := collPrefix('r', c.name)
		views := collPrefix('v', c.name)
		from := []byte(idPrefix)
		// Start at the prefix, or just past After if that comes later.
		if a := append([]byte(after), 0); after != "" && bytes.Compare(a, from) > 0 {
			from = a
		}
		mit := txn.NewIterator(badger.IteratorOptions{Prefix: append(bytes.Clone(metas), idPrefix...)})
		defer mit.Close()
		vit := txn.NewIterator(badger.IteratorOptions{Prefix: append(bytes.Clone(views), idPrefix...), PrefetchValues: true})
		defer vit.Close()
		vit.Seek(append(bytes.Clone(views), from...))
		for mit.Seek(append(bytes.Clone(metas), from...)); mit.Valid() && len(page) < limit; mit.Next() {
			id := mit.Item().Key()[len(metas):]
			for vit.Valid() && bytes.Compare(vit.Item().Key()[len(views):], id) < 0 {
				vit.Next() // a read model with no record: not listed
			}
			e := entry{id: string(id)}
			if vit.Valid() && bytes.Equal(vit.Item().Key()[len(views):], id) {
				err := vit.Item().Value(func(b []byte) error {
					v, err := decodeView(b)
					if err != nil {
						return nil // damaged: rebuilt
					}
					e.v = v
					e.v.packed = bytes.Clone(v.packed)
					return nil
				})
				if err != nil {
					return err
				}
			}
			if e.v.packed != nil && e.v.deleted && !deleted {
				continue
			}
			page = append(page, e)
		}
		return nil
	})
	return page, err
}
