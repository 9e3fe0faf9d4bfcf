package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// Relay processes that share a store (see StoreEvents) each cache the
// documents they merge pushes into, and a cached document lacks whatever
// another process appended to its record since it was loaded. Two things
// keep that from refusing good pushes:
//
//   - Marks: each EventAppended marks the collection's cached documents as
//     to be checked, and the next push to such a record first reads its
//     heads from the store (StoreRecordHeads, else the whole record): a
//     document whose heads still match is kept, one that fell behind is
//     loaded again.
//   - Before a push is refused because its changes depend on changes the
//     document lacks, the record is read from the store and the push is
//     merged again: an event may be late or lost, and only the store is
//     the truth.

// staleMarks numbers the appends other relay processes report, so that a
// cached document can tell whether its collection was written by another
// process since it was read from the store. Safe for concurrent use.
type staleMarks struct {
	mu    sync.Mutex
	n     uint64          // events so far
	colls map[Coll]uint64 // each collection's last EventAppended
	all   uint64          // the last event that concerned every collection
}

// maxMarkedColls bounds the collections staleMarks remembers one by one;
// past it, every collection counts as written (a check per cached record,
// once), and the map starts again.
const maxMarkedColls = 4096

// now returns the current mark: a document read from the store after now
// was called holds every append reported up to it.
func (m *staleMarks) now() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n
}

// appended notes that another process appended to c.
func (m *staleMarks) appended(c Coll) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.n++
	if m.colls == nil {
		m.colls = map[Coll]uint64{}
	}
	if len(m.colls) >= maxMarkedColls {
		clear(m.colls)
		m.all = m.n
	}
	m.colls[c] = m.n
}

// missed notes that events may have been lost: every collection may have
// been written.
func (m *staleMarks) missed() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.n++
	m.all = m.n
}

// stale reports whether c may have been written by another process after
// the mark seen.
func (m *staleMarks) stale(c Coll, seen uint64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.all > seen || m.colls[c] > seen
}

// checkCached returns the cached document rd of record id if the store
// holds nothing newer, or else the record as stored, loaded again (and
// cached in rd's place). The caller holds the record's lock and rd's pin,
// unpin; the pin passes to what is returned.
func (cm *committer) checkCached(ctx context.Context, s *Server, id string, rd *relayDoc, unpin func()) (*relayDoc, func(), error) {
	seen := s.marks.now()
	if rh, ok := s.store.(StoreRecordHeads); ok {
		heads, err := rh.RecordHeads(ctx, cm.c, id)
		switch {
		case err == nil && heads.Equal(rd.doc.Heads()):
			rd.seen = seen
			return rd, unpin, nil
		case err != nil && !errors.Is(err, ErrNotFound):
			unpin()
			return nil, nil, err
		}
	}
	rec, err := s.store.Record(ctx, cm.c, id)
	switch {
	case err == nil && rec.Heads.Equal(rd.doc.Heads()):
		rd.seen = seen
		return rd, unpin, nil
	case err != nil && !errors.Is(err, ErrNotFound):
		unpin()
		return nil, nil, err
	}
	unpin()
	s.docs.Remove(recordKey{cm.c, id})
	return cm.loaded(s, id, rec, err, seen)
}

// catchUpQueued merges into a queued document rd what the store holds of
// record id and rd lacks: writes of another relay process that the queue
// was merged without. The queued pushes' group will then be refused with
// ErrConflict and merged again onto the store's record; meanwhile the push
// being merged is judged against everything the store holds. The caller
// holds the record's lock.
func (cm *committer) catchUpQueued(ctx context.Context, s *Server, id string, rd *relayDoc) error {
	rec, err := s.store.Record(ctx, cm.c, id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	behind := false
	for _, h := range rec.Heads {
		if !rd.doc.Has(h) {
			behind = true
			break
		}
	}
	if !behind {
		return nil
	}
	if _, err := rd.doc.Import(rec.Data()); err != nil {
		return fmt.Errorf("%w: record %s/%s/%s: %w", ErrStoreDamaged, cm.c.Tenant, cm.c.Collection, id, err)
	}
	return nil
}

// refused turns a pushed record's changes that the document refused to
// import into the error the device gets, and logs it: a refused push is
// something an operator may need to find.
func (cm *committer) refused(s *Server, id string, err error) error {
	if !errors.Is(err, crdt.ErrCorrupt) && !errors.Is(err, crdt.ErrMissingDeps) {
		return err
	}
	s.log.Warn("push refused: invalid changes", "tenant", cm.c.Tenant, "collection", cm.c.Collection, "record", id, "err", err)
	return perr(transport.CodeInvalidChange, "record %q: %v", id, err)
}
