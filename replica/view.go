package replica

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"iter"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// Reads go to each record's read model (its v/ key), and never load its
// Automerge document: one key read for a Get, one pass over the
// collection's keys for a Scan. The read model is written in the same
// transaction as every change to the document (writeRecord,
// storeArrived), so it can never be of another version. A record with no
// read model (written before the store had them) or a damaged one is
// rebuilt from its document the first time it is read (rebuildView).

// view is a record's read model: its version, whether it is deleted, and
// its fields, packed (crdt.PackFields). Stored as
//
//	version(1) flags(1) uvarint(len(heads)) heads uvarint(len(packed)) packed crc32c(4)
//
// The checksum covers what precedes it: damage to the value reads as a
// missing read model, which is rebuilt, never as other fields.
type view struct {
	deleted bool
	heads   crdt.Heads
	packed  []byte         // nil if the fields could not be packed (see packView)
	fields  map[string]any // typed; only when packed is nil, read from the document
}

const (
	viewVersion     = 1
	viewDeleted     = 1 << 0
	viewNotPacked   = 1 << 1 // too deeply nested to pack: read from the document
	viewChecksumLen = 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (v view) encode() []byte {
	hb := v.heads.Bytes()
	b := make([]byte, 0, 2+2*binary.MaxVarintLen64+len(hb)+len(v.packed)+viewChecksumLen)
	var flags byte
	if v.deleted {
		flags |= viewDeleted
	}
	if v.packed == nil {
		flags |= viewNotPacked
	}
	b = append(b, viewVersion, flags)
	b = binary.AppendUvarint(b, uint64(len(hb)))
	b = append(b, hb...)
	b = binary.AppendUvarint(b, uint64(len(v.packed)))
	b = append(b, v.packed...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// errBadView is a read model that fails its checks: it is rebuilt.
var errBadView = errors.New("ferry: damaged read model")

// decodeView decodes a stored read model. Its packed fields alias b: a
// caller that keeps them past b's life copies them.
func decodeView(b []byte) (view, error) {
	var v view
	if len(b) < 2+viewChecksumLen || b[0] != viewVersion {
		return v, errBadView
	}
	body := b[:len(b)-viewChecksumLen]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[len(body):]) {
		return v, errBadView
	}
	flags := body[1]
	body = body[2:]
	hn, k := binary.Uvarint(body)
	if k <= 0 || hn > uint64(len(body)-k) {
		return v, errBadView
	}
	h, err := crdt.HeadsFromBytes(body[k : k+int(hn)])
	if err != nil {
		return v, errBadView
	}
	body = body[k+int(hn):]
	pn, k := binary.Uvarint(body)
	if k <= 0 || pn != uint64(len(body)-k) {
		return v, errBadView
	}
	v.deleted, v.heads = flags&viewDeleted != 0, h
	if flags&viewNotPacked == 0 {
		v.packed = body[k:]
	}
	return v, nil
}

// packView returns the document's fields, packed; nil for a document
// nested too deeply to pack, which reads then take from the document.
func packView(doc *crdt.Doc) ([]byte, error) {
	p, err := doc.PackedFields()
	if errors.Is(err, crdt.ErrType) {
		return nil, nil
	}
	return p, err
}

// putView stores the read model of a record whose document is doc and
// meta m, in the transaction that stores them.
func putView(txn *badger.Txn, coll, id string, doc *crdt.Doc, m meta) error {
	p, err := packView(doc)
	if err != nil {
		return err
	}
	return txn.Set(recKey('v', coll, id), view{deleted: m.deleted, heads: m.heads, packed: p}.encode())
}

// readView reads a record's read model within txn. ok is false if it has
// none, or a damaged one: the caller rebuilds it (if the record exists).
// The view is the caller's to keep.
func readView(txn *badger.Txn, coll, id string) (v view, ok bool, err error) {
	item, err := txn.Get(recKey('v', coll, id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return v, false, nil
	}
	if err != nil {
		return v, false, err
	}
	err = item.Value(func(b []byte) error {
		var derr error
		v, derr = decodeView(b)
		ok = derr == nil
		v.packed = bytes.Clone(v.packed)
		return nil
	})
	return v, ok, err
}

func (v view) decode(out any) error {
	if v.packed == nil {
		return crdt.DecodeValue(v.fields, out)
	}
	return crdt.DecodePacked(v.packed, out)
}

// plainFields returns the fields as Record has them: Text as string, a
// counter as int64.
func (v view) plainFields() (map[string]any, error) {
	if v.packed == nil {
		var out map[string]any
		err := crdt.DecodeValue(v.fields, &out)
		return out, err
	}
	return crdt.UnpackFields(v.packed, false)
}

// Get decodes the record into out (a pointer to a struct or a map; see
// crdt.Doc.Decode) from its read model. ErrNotFound if it does not exist
// or is deleted.
func (c *Collection) Get(id string, out any) error {
	v, err := c.current(id)
	if err != nil {
		return err
	}
	if v.deleted {
		return fmt.Errorf("%w: %s/%s is deleted", ErrNotFound, c.name, id)
	}
	return v.decode(out)
}

// Heads returns the record's current version. Deleted records have heads
// too.
func (c *Collection) Heads(id string) (crdt.Heads, error) {
	v, err := c.current(id)
	return v.heads, err
}

// current reads the record's read model, rebuilding it if it has none.
// ErrNotFound if the record never existed.
func (c *Collection) current(id string) (view, error) {
	if c.err != nil {
		return view{}, c.err
	}
	if err := ValidateID(id); err != nil {
		return view{}, err
	}
	var v view
	var ok, exists bool
	err := c.r.view(func(txn *badger.Txn) (err error) {
		if v, ok, err = readView(txn, c.name, id); ok || err != nil {
			return err
		}
		_, exists, err = readMeta(txn, c.name, id)
		return err
	})
	switch {
	case err != nil:
		return view{}, err
	case ok && v.packed == nil:
		return c.r.rebuildView(c.name, id) // fields read from the document
	case ok:
		return v, nil
	case !exists:
		return view{}, fmt.Errorf("%w: %s/%s", ErrNotFound, c.name, id)
	}
	return c.r.rebuildView(c.name, id)
}

// rebuildView builds a record's read model from its document and stores
// it, under the record's write lock. It is not fsynced: a read model lost
// in a crash is built again. A record whose fields do not pack comes back
// with them read from the document.
func (r *Replica) rebuildView(coll, id string) (view, error) {
	release, err := r.enter()
	if err != nil {
		return view{}, err
	}
	defer release()
	defer r.locks.lockAll([]string{cacheKey(coll, id)})()
	var v view
	err = r.db.Update(func(txn *badger.Txn) error {
		d, m, ok, err := r.loadDoc(txn, coll, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s/%s", ErrNotFound, coll, id)
		}
		if err := putView(txn, coll, id, d, m); err != nil {
			return err
		}
		v = view{deleted: m.deleted, heads: m.heads}
		if v.packed, err = packView(d); err == nil && v.packed == nil {
			v.fields, err = d.TypedFields()
		}
		return err
	})
	return v, err
}

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
// error ends the iteration after it is yielded.
func (c *Collection) Scan(o ScanOptions) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		if c.err != nil {
			yield(Record{}, c.err)
			return
		}
		n := 0
		after := o.After
		for {
			page := scanPage
			if o.Limit > 0 {
				page = min(page, o.Limit-n)
			}
			recs, last, err := c.scanPage(o.Prefix, after, page, o.Deleted)
			if err != nil {
				yield(Record{}, err)
				return
			}
			for _, rec := range recs {
				if rec.Fields == nil {
					// No read model, or a damaged one: built from the
					// document.
					var ok bool
					if rec, ok, err = c.rebuilt(rec.ID, o.Deleted); err != nil {
						yield(Record{}, err)
						return
					}
					if !ok {
						continue
					}
				}
				if !yield(rec, nil) {
					return
				}
				if n++; o.Limit > 0 && n == o.Limit {
					return
				}
			}
			if len(recs) < page {
				return
			}
			after = last
		}
	}
}

// scanPage reads up to limit records with IDs that have prefix, after the
// ID after, in one transaction: it walks the records' metas (every stored
// record has one) beside their read models, in step. A record whose read
// model is missing or damaged comes with nil Fields. last is the ID of the
// last record read.
func (c *Collection) scanPage(idPrefix, after string, limit int, deleted bool) (recs []Record, last string, err error) {
	err = c.r.view(func(txn *badger.Txn) error {
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
		for mit.Seek(append(bytes.Clone(metas), from...)); mit.Valid() && len(recs) < limit; mit.Next() {
			id := mit.Item().Key()[len(metas):]
			for vit.Valid() && bytes.Compare(vit.Item().Key()[len(views):], id) < 0 {
				vit.Next() // a read model with no record: not listed
			}
			rec := Record{ID: string(id)}
			if vit.Valid() && bytes.Equal(vit.Item().Key()[len(views):], id) {
				err := vit.Item().Value(func(b []byte) error {
					v, err := decodeView(b)
					if err != nil || v.packed == nil {
						return nil // rebuilt by Scan
					}
					rec.Deleted, rec.Heads = v.deleted, v.heads
					if v.deleted && !deleted {
						rec.ID = ""
						return nil
					}
					// Fields nil if damaged: rebuilt by Scan.
					rec.Fields, _ = crdt.UnpackFields(v.packed, false)
					return nil
				})
				if err != nil {
					return err
				}
			}
			if rec.ID != "" {
				recs = append(recs, rec)
			}
		}
		return nil
	})
	if len(recs) > 0 {
		last = recs[len(recs)-1].ID
	}
	return recs, last, err
}

// rebuilt reads a record for a scan after rebuilding its read model; ok
// is false if it is deleted (and tombstones are not wanted) or gone.
func (c *Collection) rebuilt(id string, deleted bool) (Record, bool, error) {
	v, err := c.r.rebuildView(c.name, id)
	if errors.Is(err, ErrNotFound) {
		return Record{}, false, nil
	}
	if err != nil || v.deleted && !deleted {
		return Record{}, false, err
	}
	f, err := v.plainFields()
	if err != nil {
		return Record{}, false, err
	}
	return Record{ID: id, Deleted: v.deleted, Heads: v.heads, Fields: f}, true, nil
}
