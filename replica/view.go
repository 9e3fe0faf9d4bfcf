package replica

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

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
// meta m, and its index entries, in the transaction that stores them. The
// caller holds r.writing(). pv, if it is doc's at m's heads, gives the
// fields packed already; otherwise (or nil) they are read from doc.
func (r *Replica) putView(txn *badger.Txn, coll, id string, doc *crdt.Doc, m meta, pv *preparedView) error {
	var p []byte
	var err error
	if pv.of(doc, m.heads) {
		p, err = pv.packed, pv.err
	} else {
		p, err = packView(doc)
	}
	if err != nil {
		return err
	}
	v := view{deleted: m.deleted, heads: m.heads, packed: p}
	key := recKey('v', coll, id)
	if len(r.idx.of(coll)) > 0 {
		old, _, err := getKey(txn, key)
		if err != nil {
			return err
		}
		if err := r.updateIndexes(txn, coll, id, old, &v); err != nil {
			return err
		}
	}
	return txn.Set(key, v.encode())
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
	defer r.writing()()
	var v view
	err = r.db.Update(func(txn *badger.Txn) error {
		d, m, ok, err := r.loadDoc(txn, coll, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s/%s", ErrNotFound, coll, id)
		}
		if err := r.putView(txn, coll, id, d, m, nil); err != nil {
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
