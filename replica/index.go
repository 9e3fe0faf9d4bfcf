package replica

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// Secondary indexes. An index of a collection orders its live records by
// the values of one or more top-level fields. Its definition is stored
// (x/<coll>\0<name>), so every write maintains it, whether or not the app
// declared it again since the store was opened; its entries are keys
//
//	i/<coll>\0<name>\0<values><id>
//
// whose values are the fields' values in an order-preserving encoding,
// cut to their first indexValueBound bytes (indexEntry), written and deleted in the transaction that writes the
// record's read model, by the same code (putView, deleteRecordKeys).
// Tombstones have no entries.

// IndexOptions declare an index for [Collection.EnsureIndex].
type IndexOptions struct {
	// Fields are the top-level fields the index orders records by: the
	// first, then the second among records with equal first values, and
	// so on; then by ID.
	Fields []string
	// Progress, if set, is told how many of the collection's records the
	// build has gone through, after each page of them (256), while
	// EnsureIndex indexes the records already there. It is called on
	// EnsureIndex's goroutine, with no lock held and no transaction open,
	// so it may read the replica (a write waits for nothing, but is seen
	// or not by the build like any other).
	Progress func(done int)
}

type indexDef struct {
	Name   string   `json:"name"`
	Fields []string `json:"fields"`
}

// indexes holds every collection's index definitions. Writers hold mu for
// reading across the store transaction that reads the definitions and
// writes the entries; declaring and dropping an index hold it for
// writing, so no write is half-way through with other definitions.
type indexes struct {
	mu   sync.RWMutex
	defs map[string][]indexDef // by collection
}

// of returns the collection's index definitions. The caller holds mu.
func (x *indexes) of(coll string) []indexDef { return x.defs[coll] }

// writing is held by every store transaction that may write read models.
func (r *Replica) writing() func() {
	r.idx.mu.RLock()
	return r.idx.mu.RUnlock
}

func indexDefKey(coll, name string) []byte { return recKey('x', coll, name) }

func indexPrefix(coll, name string) []byte {
	k := recKey('i', coll, name)
	return append(k, 0)
}

// loadIndexes reads every index definition, at open.
func (r *Replica) loadIndexes() error {
	r.idx.defs = map[string][]indexDef{}
	return r.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("x/"), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()[2:]
			coll, _, _ := bytes.Cut(k, []byte{0})
			var d indexDef
			err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &d) })
			if err != nil {
				return fmt.Errorf("ferry: index definition %q: %w", k, err)
			}
			r.idx.defs[string(coll)] = append(r.idx.defs[string(coll)], d)
		}
		return nil
	})
}

// EnsureIndex declares the index name on the collection, ordering its
// records by o.Fields, and builds it for the records it holds, in store
// transactions of a few hundred records each, before it returns. An index
// that exists with the same fields is left as it is (declaring the app's
// indexes at every start costs one look); one with other fields is
// rebuilt. From then on every change that reaches a record (local writes,
// syncs, refreshes, imports) updates its entries in the transaction that
// stores it. Names follow ValidateCollection's rules.
func (c *Collection) EnsureIndex(name string, o IndexOptions) error {
	if c.err != nil {
		return c.err
	}
	if err := ValidateCollection(name); err != nil {
		return fmt.Errorf("%w: index name: %w", ErrInvalidName, err)
	}
	if len(o.Fields) == 0 {
		return fmt.Errorf("%w: index %s names no field", ErrInvalidIndex, name)
	}
	for _, f := range o.Fields {
		if f == "" || f == crdt.TombstoneKey {
			return fmt.Errorf("%w: index %s: field %q", ErrInvalidIndex, name, f)
		}
	}
	r := c.r
	release, err := r.enter()
	if err != nil {
		return err
	}
	defer release()
	r.idx.mu.Lock()
	defs := r.idx.of(c.name)
	i := slices.IndexFunc(defs, func(d indexDef) bool { return d.Name == name })
	if i >= 0 && slices.Equal(defs[i].Fields, o.Fields) {
		r.idx.mu.Unlock()
		return nil
	}
	def := indexDef{Name: name, Fields: slices.Clone(o.Fields)}
	b, _ := json.Marshal(def)
	err = r.db.Update(func(txn *badger.Txn) error { return txn.Set(indexDefKey(c.name, name), b) })
	if err != nil {
		r.idx.mu.Unlock()
		return err
	}
	defs = slices.Clone(defs)
	if i >= 0 {
		defs[i] = def
	} else {
		defs = append(defs, def)
	}
	r.idx.defs[c.name] = defs
	r.idx.mu.Unlock()
	// From here every write maintains the index. Entries of an earlier
	// definition go first; then each record gets its entry, under its
	// lock, so that a write in between is either seen or sees the index.
	if i >= 0 {
		if err := r.deleteIndexEntries(c.name, name); err != nil {
			return err
		}
	}
	return r.buildIndex(c.name, def, o.Progress)
}

// buildIndex writes the entries of def for every record of coll, a page
// of records per transaction, each page under its records' locks, and
// tells progress (if not nil) after each page. A page is listed from the
// records' keys alone; each record's read model is read once, under its
// lock, where its entry is written.
func (r *Replica) buildIndex(coll string, def indexDef, progress func(done int)) error {
	after := ""
	done := 0
	// A page of index keys (up to about 1.3 KiB each) can pass Badger's
	// limit on one transaction with small memtables: a page that does is
	// retried smaller.
	page := scanPage
	for {
		ids, err := r.pageIDs(coll, after, page)
		if err != nil || len(ids) == 0 {
			return err
		}
		keys := make([]string, len(ids))
		for i, id := range ids {
			keys[i] = cacheKey(coll, id)
		}
		var rebuild []string
		indexed := 0
		unlock := r.locks.lockAll(keys)
		err = r.db.Update(func(txn *badger.Txn) error {
			// The read models are read in key order with one iterator:
			// a Get each would decompress a block per record once the
			// block cache no longer holds it.
			views := collPrefix('v', coll)
			it := txn.NewIterator(badger.IteratorOptions{Prefix: views})
			defer it.Close()
			it.Seek(append(bytes.Clone(views), ids[0]...))
			for _, id := range ids {
				v, ok, err := viewAt(it, views, id)
				switch {
				case err != nil:
					continue
				case !ok:
					// No read model (a store from before them) or a
					// damaged one: rebuilt below, and indexed as it is
					// written.
					rebuild = append(rebuild, id)
					continue
				case v.deleted:
					continue
				}
				indexed++
				if v.packed == nil {
					continue // too deeply nested to pack: not indexed
				}
				f, err := crdt.UnpackFields(v.packed, false)
				if err != nil {
					continue
				}
				if err := txn.Set(indexEntry(coll, def, f, id), []byte(id)); err != nil {
					return err
				}
			}
			return nil
		})
		unlock()
		if len(ids) > 1 && errors.Is(err, badger.ErrTxnTooBig) {
			page = len(ids) / 2
			continue
		}
		if err != nil {
			return err
		}
		for _, id := range rebuild {
			v, err := r.rebuildView(coll, id)
			if errors.Is(err, ErrNotFound) {
				continue // purged since
			}
			if err != nil {
				return err
			}
			if !v.deleted {
				indexed++
			}
		}
		if done += indexed; progress != nil {
			progress(done)
		}
		if len(ids) < page {
			return nil
		}
		after = ids[len(ids)-1]
		r.mem.read(buildWeight * len(ids)) // no lock held, no transaction open
	}
}

// viewAt advances it, an iterator over a collection's read models
// (prefix views), to the record id, which comes after every ID it was
// asked for before, and returns its read model as readView does.
func viewAt(it *badger.Iterator, views []byte, id string) (v view, ok bool, err error) {
	for ; it.Valid(); it.Next() {
		switch k := it.Item().Key()[len(views):]; bytes.Compare(k, []byte(id)) {
		case -1:
			continue
		case 1:
			return v, false, nil
		}
		err = it.Item().Value(func(b []byte) error {
			var derr error
			v, derr = decodeView(b)
			ok = derr == nil
			v.packed = bytes.Clone(v.packed)
			return nil
		})
		return v, ok, err
	}
	return v, false, nil
}

// pageIDs lists up to limit IDs of coll's stored records (tombstones
// included) after the ID after, from their metas' keys: no value is read.
// The caller holds r.enter().
func (r *Replica) pageIDs(coll, after string, limit int) ([]string, error) {
	var ids []string
	err := r.db.View(func(txn *badger.Txn) error {
		prefix := collPrefix('r', coll)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		from := append(bytes.Clone(prefix), after...)
		if after != "" {
			from = append(from, 0)
		}
		for it.Seek(from); it.Valid() && len(ids) < limit; it.Next() {
			ids = append(ids, string(it.Item().Key()[len(prefix):]))
		}
		return nil
	})
	return ids, err
}

// DropIndex removes the index and its entries. Dropping an index that
// does not exist does nothing.
func (c *Collection) DropIndex(name string) error {
	if c.err != nil {
		return c.err
	}
	r := c.r
	release, err := r.enter()
	if err != nil {
		return err
	}
	defer release()
	r.idx.mu.Lock()
	defs := r.idx.of(c.name)
	i := slices.IndexFunc(defs, func(d indexDef) bool { return d.Name == name })
	if i < 0 {
		r.idx.mu.Unlock()
		return nil
	}
	err = r.db.Update(func(txn *badger.Txn) error { return txn.Delete(indexDefKey(c.name, name)) })
	if err == nil {
		r.idx.defs[c.name] = slices.Delete(slices.Clone(defs), i, i+1)
	}
	r.idx.mu.Unlock()
	if err != nil {
		return err
	}
	// No write adds entries any more: delete them.
	return r.deleteIndexEntries(c.name, name)
}

// Indexes lists the collection's indexes, by name, with their fields.
func (c *Collection) Indexes() map[string][]string {
	c.r.idx.mu.RLock()
	defer c.r.idx.mu.RUnlock()
	out := map[string][]string{}
	for _, d := range c.r.idx.of(c.name) {
		out[d.Name] = slices.Clone(d.Fields)
	}
	return out
}

// deleteIndexEntries deletes an index's entries, a batch per transaction.
func (r *Replica) deleteIndexEntries(coll, name string) error {
	prefix := indexPrefix(coll, name)
	for {
		var keys [][]byte
		err := r.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
			defer it.Close()
			// Bounded by bytes too: Badger counts each deleted key
			// against its limit on one transaction.
			size := 0
			for it.Rewind(); it.Valid() && len(keys) < 1000 && size < 1<<20; it.Next() {
				keys = append(keys, it.Item().KeyCopy(nil))
				size += len(keys[len(keys)-1])
			}
			return nil
		})
		if err != nil || len(keys) == 0 {
			return err
		}
		err = r.db.Update(func(txn *badger.Txn) error {
			for _, k := range keys {
				if err := txn.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
}

// updateIndexes replaces the index entries of a record whose read model
// was old (ok: it had one) by those of its new one (nil: the record is
// gone), within txn. The caller holds r.writing().
func (r *Replica) updateIndexes(txn *badger.Txn, coll, id string, old []byte, next *view) error {
	defs := r.idx.of(coll)
	if len(defs) == 0 {
		return nil
	}
	var before, after map[string]any
	if old != nil {
		if v, err := decodeView(old); err == nil && !v.deleted && v.packed != nil {
			before, _ = crdt.UnpackFields(v.packed, false)
		}
	}
	if next != nil && !next.deleted && next.packed != nil {
		var err error
		if after, err = crdt.UnpackFields(next.packed, false); err != nil {
			return err
		}
	}
	for _, d := range defs {
		var ok, nk []byte
		if before != nil {
			ok = indexEntry(coll, d, before, id)
		}
		if after != nil {
			nk = indexEntry(coll, d, after, id)
		}
		if bytes.Equal(ok, nk) {
			continue
		}
		if ok != nil {
			if err := txn.Delete(ok); err != nil {
				return err
			}
		}
		if nk != nil {
			if err := txn.Set(nk, []byte(id)); err != nil {
				return err
			}
		}
	}
	return nil
}

// indexValueBound is the most bytes of encoded values (indexValues) an
// index entry's key holds. Badger refuses keys past 65,000 bytes, and
// every key a record writes counts against its limit on one transaction,
// so an entry whose values encode longer holds their first
// indexValueBound bytes and ixCut: a prefix sorts no later than the
// values it cuts and no earlier than any shorter entry before them, so
// keys keep the index's order except among entries cut to the same
// prefix, which queries order (and bound) by the values in the records'
// read models. An entry that fits is the full encoding, as it always was.
const indexValueBound = 1024

// ixCut follows the values of an entry cut to indexValueBound bytes: the
// values part of such a key is indexValueBound+1 bytes long, and no
// entry that fits is.
const ixCut byte = 0x00

// indexValues encodes a record's values of the index's fields, in order.
func indexValues(d indexDef, fields map[string]any) []byte {
	var b []byte
	for _, f := range d.Fields {
		b = appendIndexValue(b, fields[f])
	}
	return b
}

// indexEntry returns the key of a record's entry: base (indexPrefix), its
// values, cut to indexValueBound bytes if longer, then its ID.
func indexEntry(coll string, d indexDef, fields map[string]any, id string) []byte {
	return storedIndexKey(indexPrefix(coll, d.Name), indexValues(d, fields), id)
}

func storedIndexKey(base, vals []byte, id string) []byte {
	k := make([]byte, 0, len(base)+min(len(vals), indexValueBound+1)+len(id))
	k = append(k, base...)
	if len(vals) > indexValueBound {
		k = append(append(k, vals[:indexValueBound]...), ixCut)
	} else {
		k = append(k, vals...)
	}
	return append(k, id...)
}

// fullIndexKey is the key a record's entry would have if no entry were
// cut: the order of the index, and what query bounds compare with.
func fullIndexKey(coll string, d indexDef, fields map[string]any, id string) []byte {
	k := append(indexPrefix(coll, d.Name), indexValues(d, fields)...)
	return append(k, id...)
}

// cutEntry reports whether the stored index key k, whose value is id,
// is an entry cut to indexValueBound bytes of values.
func cutEntry(base, k []byte, id string) bool {
	return len(k)-len(base)-len(id) > indexValueBound
}

// Index value encoding: a tag, then bytes that sort as the values do.
// Kinds sort nil (or absent), false, true, numbers, times, strings,
// bytes, then maps and lists (which sort together, as equal). Numbers of
// every type (int64, uint64, float64, counters) compare as float64.
// Strings and text are one kind.
const (
	ixNil byte = 0x01 + iota
	ixFalse
	ixTrue
	ixNumber
	ixTime
	ixString
	ixBytes
	ixOther
)

func appendIndexValue(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, ixNil)
	case bool:
		if x {
			return append(b, ixTrue)
		}
		return append(b, ixFalse)
	case time.Time:
		return binary.BigEndian.AppendUint64(append(b, ixTime), uint64(x.UnixMilli())^(1<<63))
	case string:
		return appendEscaped(append(b, ixString), x)
	case crdt.Text:
		return appendEscaped(append(b, ixString), string(x))
	case []byte:
		return appendEscaped(append(b, ixBytes), string(x))
	}
	if f, ok := asFloat(v); ok {
		bits := math.Float64bits(f)
		if f < 0 || f == 0 && math.Signbit(f) {
			bits = ^bits
		} else {
			bits |= 1 << 63
		}
		if f == 0 {
			bits = 1 << 63 // -0 and 0 are one value
		}
		return binary.BigEndian.AppendUint64(append(b, ixNumber), bits)
	}
	return append(b, ixOther)
}

func asFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	case float64:
		return x, true
	case crdt.Counter:
		return float64(x), true
	case int:
		return float64(x), true
	case int32:
		return float64(x), true
	case uint32:
		return float64(x), true
	case float32:
		return float64(x), true
	case uint:
		return float64(x), true
	}
	return 0, false
}

// appendEscaped writes s so that it sorts as s does and ends where it
// ends: a 0 byte becomes 0 0xff, and 0 0 ends it.
func appendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			b = append(b, 0, 0xff)
		} else {
			b = append(b, s[i])
		}
	}
	return append(b, 0, 0)
}

// indexable reports whether v is a value index queries take.
func indexable(v any) error {
	switch v.(type) {
	case nil, bool, time.Time, string, crdt.Text, []byte:
		return nil
	}
	if _, ok := asFloat(v); ok {
		return nil
	}
	return fmt.Errorf("%w: cannot query an index by a %T", ErrInvalidIndex, v)
}

// cutIndexEntries replaces each index entry of more than indexValueBound
// bytes of values, as a store of format 2 holds them, by the entry its
// record's read model gives now, in transactions of a fraction of
// Badger's limit each. It runs at open, before anything else writes. Only
// long keys are looked at further (their value, the ID, and the read
// model), so a store without them costs one pass over its index keys.
func (r *Replica) cutIndexEntries() error {
	type long struct {
		key []byte
		id  string
	}
	budget, count := r.db.MaxBatchSize()/2, r.db.MaxBatchCount()/4
	var after []byte
	for {
		var batch []long
		var size int64
		done := false
		err := r.db.View(func(txn *badger.Txn) error {
			prefix := []byte("i/")
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
			defer it.Close()
			from := prefix
			if after != nil {
				from = append(bytes.Clone(after), 0)
			}
			for it.Seek(from); it.Valid(); it.Next() {
				k := it.Item().Key()
				base, ok := entryBase(k)
				if !ok || len(k)-len(base) <= indexValueBound {
					continue
				}
				id, err := it.Item().ValueCopy(nil)
				if err != nil {
					return err
				}
				if !cutEntry(base, k, string(id)) {
					continue
				}
				batch = append(batch, long{key: bytes.Clone(k), id: string(id)})
				if size += int64(len(k)+indexValueBound) + 512; size >= budget || int64(len(batch)) >= count {
					after = batch[len(batch)-1].key
					return nil
				}
			}
			done = true
			return nil
		})
		if err != nil {
			return err
		}
		var rebuild [][2]string
		release := r.writing()
		err = r.db.Update(func(txn *badger.Txn) error {
			for _, l := range batch {
				base, _ := entryBase(l.key)
				coll, name, _ := bytes.Cut(base[2:len(base)-1], []byte{0})
				i := slices.IndexFunc(r.idx.of(string(coll)), func(d indexDef) bool { return d.Name == string(name) })
				v, ok, err := readView(txn, string(coll), l.id)
				if err != nil {
					return err
				}
				var next []byte
				if i >= 0 && ok && !v.deleted && v.packed != nil {
					if f, err := crdt.UnpackFields(v.packed, false); err == nil {
						next = indexEntry(string(coll), r.idx.of(string(coll))[i], f, l.id)
					}
				}
				if bytes.Equal(next, l.key) {
					continue // cut already, by an upgrade a crash stopped
				}
				if err := txn.Delete(l.key); err != nil {
					return err
				}
				if next != nil {
					if err := txn.Set(next, []byte(l.id)); err != nil {
						return err
					}
				} else if i >= 0 && !ok {
					rebuild = append(rebuild, [2]string{string(coll), l.id})
				}
			}
			return nil
		})
		release()
		if err != nil {
			return err
		}
		// A record without a readable read model gets one, and its
		// entries with it.
		for _, x := range rebuild {
			if _, err := r.rebuildView(x[0], x[1]); err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrCorrupt) {
				return err
			}
		}
		if done {
			return nil
		}
	}
}

// entryBase returns the index prefix (indexPrefix) an index entry's key
// starts with.
func entryBase(k []byte) ([]byte, bool) {
	if !bytes.HasPrefix(k, []byte("i/")) {
		return nil, false
	}
	i := bytes.IndexByte(k[2:], 0)
	if i < 0 {
		return nil, false
	}
	j := bytes.IndexByte(k[2+i+1:], 0)
	if j < 0 {
		return nil, false
	}
	return k[:2+i+1+j+1], true
}
