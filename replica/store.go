package replica

import (
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

func cacheKey(coll, id string) string { return coll + "\x00" + id }

// readMeta returns the record's meta, or ok=false if the record never
// existed.
func readMeta(txn *badger.Txn, coll, id string) (meta, bool, error) {
	item, err := txn.Get(recKey('r', coll, id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return meta{}, false, nil
	}
	if err != nil {
		return meta{}, false, err
	}
	var m meta
	err = item.Value(func(v []byte) error {
		m, err = decodeMeta(v)
		return err
	})
	return m, err == nil, err
}

// loadDoc returns the record's document and meta, from the cache or the
// store. The caller holds the record's stripe lock. A record that never
// existed returns ok=false. A record whose stored bytes do not load as the
// version its meta records gives ErrCorrupt: a damaged store must not
// read as an empty or older record.
func (r *Replica) loadDoc(txn *badger.Txn, coll, id string) (*crdt.Doc, meta, bool, error) {
	key := cacheKey(coll, id)
	if d, m, ok := r.cache.get(key); ok {
		return d, m, true, nil
	}
	m, ok, err := readMeta(txn, coll, id)
	if err != nil || !ok {
		return nil, meta{}, false, err
	}
	// Snapshot and chunks concatenate into one Automerge byte stream that
	// loads in a single call.
	buf := make([]byte, 0, m.snapBytes+m.chunkBytes)
	item, err := txn.Get(recKey('s', coll, id))
	switch {
	case err == nil:
		if buf, err = item.ValueCopy(buf); err != nil {
			return nil, meta{}, false, err
		}
	case !errors.Is(err, badger.ErrKeyNotFound):
		return nil, meta{}, false, err
	}
	buf, chunks, err := appendChunks(txn, coll, id, buf)
	if err != nil {
		return nil, meta{}, false, err
	}
	// Badger reads a block or value that fails its checksum as a missing
	// key, and an Automerge stream of zero bytes loads as an empty
	// document: the sizes the meta records catch a lost snapshot or chunk
	// before the heads would.
	if len(buf) != m.snapBytes+m.chunkBytes || chunks != m.chunks {
		return nil, meta{}, false, corrupt(coll, id, fmt.Errorf("stored %d bytes in %d chunks, its bookkeeping says %d in %d",
			len(buf), chunks, m.snapBytes+m.chunkBytes, m.chunks))
	}
	d, err := crdt.Load(buf, r.actorID())
	if err != nil {
		return nil, meta{}, false, corrupt(coll, id, err)
	}
	if h := d.Heads(); !h.Equal(m.heads) {
		d.Free()
		return nil, meta{}, false, corrupt(coll, id, fmt.Errorf("stored bytes load as version %v, its bookkeeping says %v", h, m.heads))
	}
	// Counted by what it holds, not by its stored bytes, which may be
	// hundreds of times smaller (see crdt.Cost); bytes that loaded have
	// framed already, so an error here is not expected.
	if c, err := crdt.Estimate(buf, nil); err == nil {
		r.cache.putLoaded(key, d, m, len(buf), c.Bytes)
	} else {
		r.cache.put(key, d, m)
	}
	return d, m, true, nil
}

// appendChunks appends the record's stored chunks to buf, in order, and
// counts them.
func appendChunks(txn *badger.Txn, coll, id string, buf []byte) ([]byte, int, error) {
	chunks := 0
	it := txn.NewIterator(badger.IteratorOptions{Prefix: chunkPrefix(coll, id), PrefetchValues: true, PrefetchSize: 16})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		chunks++
		if err := it.Item().Value(func(v []byte) error { buf = append(buf, v...); return nil }); err != nil {
			return nil, 0, err
		}
	}
	return buf, chunks, nil
}

// build builds d, a record's document, if a pull left it deferred (see
// batchRun.touch), before code that edits it or reads it whole takes it:
// changes the Go checks accepted and Automerge does not load (a defect of
// those checks) then fail with ErrCorrupt here, not as a panic inside
// that code (crdt.Doc.Build). A built document costs nothing.
func build(coll, id string, d *crdt.Doc) error {
	if err := d.Build(); err != nil {
		return corrupt(coll, id, err)
	}
	return nil
}

// corrupt is the ErrCorrupt for one record.
func corrupt(coll, id string, cause error) error {
	return fmt.Errorf("%w: %s/%s: %w; the store is damaged: back up the folder, then move it aside and open a new replica in its place to sync again", ErrCorrupt, coll, id, cause)
}

// writeRecord stores the changes doc gained since m.heads as a new chunk,
// or folds everything into a fresh snapshot once enough chunks piled up. It
// returns the new meta. pending marks the record as having changes the relay
// has not acknowledged. pv, if not nil, may be doc's read model (see
// preparedView).
func (r *Replica) writeRecord(txn *badger.Txn, coll, id string, doc *crdt.Doc, m meta, pending bool, pv *preparedView) (meta, error) {
	delta, err := doc.ChangesSince(m.heads)
	if err != nil {
		return m, err
	}
	if len(delta) == 0 {
		return m, nil
	}
	nm := m
	nm.heads = doc.Heads()
	nm.deleted = pv.deletedOf(doc, nm.heads)
	// Past MaxRecordBytes, compact rather than refuse: the limit is on the
	// saved document, which chunks of raw changes overstate.
	if m.chunks+1 >= foldAfter(r.opts.CompactAfter, m.snapBytes) || len(delta)+m.chunkBytes > 2*m.snapBytes+4096 && m.chunks >= 4 ||
		m.snapBytes+m.chunkBytes+len(delta) > r.opts.MaxRecordBytes {
		snap := doc.Save()
		if len(snap) > r.opts.MaxRecordBytes {
			return m, fmt.Errorf("%w: %s/%s would be %d bytes, limit %d", ErrTooLarge, coll, id, len(snap), r.opts.MaxRecordBytes)
		}
		for n := m.nextChunk - uint64(m.chunks); n < m.nextChunk; n++ {
			if err := txn.Delete(chunkKey(coll, id, n)); err != nil {
				return m, err
			}
		}
		if err := txn.Set(recKey('s', coll, id), snap); err != nil {
			return m, err
		}
		nm.snapBytes, nm.chunks, nm.chunkBytes = len(snap), 0, 0
	} else {
		if err := txn.Set(chunkKey(coll, id, m.nextChunk), delta); err != nil {
			return m, err
		}
		nm.nextChunk++
		nm.chunks++
		nm.chunkBytes += len(delta)
	}
	if err := txn.Set(recKey('r', coll, id), nm.encode()); err != nil {
		return m, err
	}
	if err := r.putView(txn, coll, id, doc, nm, pv); err != nil {
		return m, err
	}
	if pending {
		if err := txn.Set(recKey('p', coll, id), nil); err != nil {
			return m, err
		}
	}
	return nm, nil
}

// foldUnit and foldMaxFactor scale how many chunks a record gathers
// before they are folded into its snapshot (foldAfter).
const (
	foldUnit      = 1 << 10
	foldMaxFactor = 8
)

// foldAfter is how many chunks a record whose snapshot is snapBytes long
// gathers before they are folded into it: compactAfter, once more for
// each foldUnit of snapshot, up to foldMaxFactor times. A fold saves the
// whole document, in time that grows with its history, on the path of the
// write that makes it (a live edit, or a change applied from the relay):
// a record edited many times folds less often, so that its folds cost
// each write about the same. Its chunks' bytes stay bounded by its
// snapshot's (writeRecord).
func foldAfter(compactAfter, snapBytes int) int {
	return compactAfter * min(1+snapBytes/foldUnit, foldMaxFactor)
}

func deleteIfPresent(txn *badger.Txn, key []byte) error {
	_, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return txn.Delete(key)
}

// recordIDs lists every stored record of a collection, tombstones
// included.
func (r *Replica) recordIDs(coll string) ([]string, error) {
	release, err := r.enter()
	if err != nil {
		return nil, err
	}
	defer release()
	var ids []string
	err = r.db.View(func(txn *badger.Txn) error {
		prefix := collPrefix('r', coll)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			ids = append(ids, string(it.Item().Key()[len(prefix):]))
		}
		return nil
	})
	return ids, err
}

// deleteRecordKeys deletes every key of a record, its index entries
// included. The caller holds r.writing().
func (r *Replica) deleteRecordKeys(txn *badger.Txn, coll, id string, m meta) error {
	if len(r.idx.of(coll)) > 0 {
		old, _, err := getKey(txn, recKey('v', coll, id))
		if err != nil {
			return err
		}
		if err := r.updateIndexes(txn, coll, id, old, nil); err != nil {
			return err
		}
	}
	for n := m.nextChunk - uint64(m.chunks); n < m.nextChunk; n++ {
		if err := txn.Delete(chunkKey(coll, id, n)); err != nil {
			return err
		}
	}
	for _, p := range []byte{'r', 'v', 's', 'p', 'a', 'q', 'l'} {
		if err := txn.Delete(recKey(p, coll, id)); err != nil {
			return err
		}
	}
	return nil
}

func getKey(txn *badger.Txn, key []byte) ([]byte, bool, error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	v, err := item.ValueCopy(nil)
	return v, true, err
}

// idSet returns the IDs of a collection's records that have a key with
// the given prefix (q: quarantined, l: holding a resolution).
func (r *Replica) idSet(prefix byte, coll string) (map[string]bool, error) {
	out := map[string]bool{}
	err := r.view(func(txn *badger.Txn) error {
		p := collPrefix(prefix, coll)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			out[string(it.Item().Key()[len(p):])] = true
		}
		return nil
	})
	return out, err
}
