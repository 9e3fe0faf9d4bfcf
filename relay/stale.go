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
//     heads from the store (StoreRecordHeads, else the whole record),
//     before it takes the record's lock: a document whose heads still
//     match is kept, one that fell behind is read from the store again.
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

// staleRecord tells enqueue that a record's changes depend on changes its
// document lacks: read the record from the store again, and merge again,
// before refusing the push.
type staleRecord struct{ record string }

func (e *staleRecord) Error() string {
	return fmt.Sprintf("relay: record %q may be older than the store", e.record)
}

// readHeads notes in p the stored heads of record id, whose cached
// document p holds: load compares them with the document's under the
// record's lock. Called with no lock held.
func (cm *committer) readHeads(ctx context.Context, s *Server, id string, p *preloaded) error {
	seen := s.marks.now()
	var heads crdt.Heads
	var err error
	if rh, ok := s.store.(StoreRecordHeads); ok {
		heads, err = rh.RecordHeads(ctx, cm.c, id)
	} else {
		var rec Record
		rec, err = s.store.Record(ctx, cm.c, id)
		heads = rec.Heads
	}
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	p.checked, p.heads, p.seen = true, heads, seen
	return nil
}

// readStored notes in p record id as stored, for the queued document p
// holds to take in (catchUpQueued). Called with no lock held.
func (cm *committer) readStored(ctx context.Context, s *Server, id string, p *preloaded) error {
	rec, err := s.store.Record(ctx, cm.c, id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	p.stored = &rec
	return nil
}

// checkCached decides whether rd, the cached document of record id, may
// be merged onto: only if preload read the store's heads for this very
// document (p), and they are its own. If they differ, the document is
// older than the store: it leaves the cache, and errReload has the push
// read the record from the store. The caller holds the record's lock.
func (cm *committer) checkCached(s *Server, id string, rd *relayDoc, p *preloaded) error {
	if !p.checked || p.rd != rd {
		return errReload // written since preload looked: look again
	}
	if !p.heads.Equal(rd.doc.Heads()) {
		rd.dropped.Store(true)
		s.docs.Remove(recordKey{cm.c, id})
		return errReload
	}
	rd.seen.Store(p.seen)
	return nil
}

// catchUpQueued merges into a queued document rd what rec, the record as
// stored, holds and rd lacks: writes of another relay process that the
// queue was merged without. The queued pushes' group will then be refused
// with ErrConflict and merged again onto the store's record; meanwhile the
// push being merged is judged against everything the store holds. The
// caller holds the record's lock.
func (cm *committer) catchUpQueued(id string, rd *relayDoc, rec Record) error {
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
	// What that adds to its saved size is bounded by what it took in, and
	// known once measured (merged.fits).
	rd.unsaved += len(rec.Data())
	rd.loaded = true
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
