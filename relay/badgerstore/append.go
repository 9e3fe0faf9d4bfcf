package badgerstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/relay"
)

// Append implements relay.Store. An append that fits one Badger
// transaction is one: the fence check, the Base checks and every write.
// A larger one (Badger refuses a transaction past 15% of a memtable, and
// the memtables are small; see memTableSize) is split by appendSplit,
// and readers still see all of it or nothing. Per entry it writes the log
// entry, the record's meta and one tail key: what the push adds, whatever
// the record's history.
func (s *Store) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	if err := relay.CheckAppend(c, entries); err != nil {
		return 0, err
	}
	var last uint64
	err := s.locked(ctx, c, func() error {
		var p *appendPlan
		err := s.commitUpdate(c, func(txn *badger.Txn) error {
			q, err := planAppend(txn, c, fence, now, entries)
			if err != nil {
				return err
			}
			p = q
			for _, w := range p.data {
				if err := w.apply(txn); err != nil {
					return err
				}
			}
			return p.publish(txn)
		})
		if errors.Is(err, badger.ErrTxnTooBig) && p != nil {
			err = s.appendSplit(p)
		}
		if err == nil {
			last = p.last
		}
		return err
	})
	if errors.Is(err, badger.ErrTxnTooBig) {
		return 0, fmt.Errorf("%w: %d entries to %s/%s (%w)", relay.ErrAppendTooLarge, len(entries), c.Tenant, c.Collection, err)
	}
	return last, err
}

// appendPlan is an append checked against the store and turned into
// writes: the entries' log entries and tail keys (data), which no reader
// sees until the collection's head and the records' metas say so, and
// those (publish).
type appendPlan struct {
	c           relay.Coll
	fence       uint64
	now         time.Time
	first, last uint64 // the entries' sequence numbers
	data        []write
	pub         []write
}

type write struct {
	key, value []byte
	del        bool
}

func (w write) apply(txn *badger.Txn) error {
	if w.del {
		return txn.Delete(w.key)
	}
	return txn.Set(w.key, w.value)
}

// planAppend checks an append in txn (the fence, each entry's Base) and
// plans its writes. It only reads.
func planAppend(txn *badger.Txn, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (*appendPlan, error) {
	if err := checkFence(txn, c, fence, now); err != nil {
		return nil, err
	}
	head, err := getUint64(txn, collKey("head", c))
	if err != nil {
		return nil, err
	}
	u, err := getUsage(txn, c)
	if err != nil {
		return nil, err
	}
	p := &appendPlan{c: c, fence: fence, now: now, first: head + 1}
	type rec struct{ old, m recMeta }
	recs := map[string]*rec{}
	var order []string
	for _, e := range entries {
		r := recs[e.Record]
		if r == nil {
			m, found, err := getRecMeta(txn, c, e.Record)
			if err != nil {
				return nil, err
			}
			if !found {
				u.Records++
			}
			r = &rec{old: m, m: m}
			recs[e.Record] = r
			order = append(order, e.Record)
		}
		// A second entry for one record is checked against the first
		// one's heads.
		if !e.Base.Equal(r.m.heads) {
			return nil, &relay.ConflictError{Record: e.Record}
		}
		head++
		r.m.seq, r.m.heads = head, e.Heads
		r.m.tailBytes += int64(len(e.Changes))
		r.m.tailEntries++
		u.Bytes += int64(len(e.Changes))
		p.data = append(p.data,
			write{key: logKey(c, head), value: encodeLogEntry(e)},
			write{key: tailKey(c, e.Record, head), value: binary.AppendUvarint(nil, uint64(len(e.Changes)))})
	}
	p.last = head
	for _, id := range order {
		r := recs[id]
		p.pub = append(p.pub, write{key: recKey("rec", c, id), value: r.m.encode()})
		// The candidate mark is written only when it changes, so its keys
		// do not pile up versions that every scan of them would skip.
		switch was, now := r.old.candidate(), r.m.candidate(); {
		case now && !was:
			p.pub = append(p.pub, write{key: recKey("cand", c, id)})
		case !now && was:
			p.pub = append(p.pub, write{key: recKey("cand", c, id), del: true})
		}
	}
	p.pub = append(p.pub,
		write{key: collKey("usage", c), value: encodeUsage(u)},
		write{key: collKey("head", c), value: binary.BigEndian.AppendUint64(nil, p.last)})
	return p, nil
}

// publish writes what makes the append visible: the records' metas and
// candidate marks, the usage and the head.
func (p *appendPlan) publish(txn *badger.Txn) error {
	for _, w := range p.pub {
		if err := w.apply(txn); err != nil {
			return err
		}
	}
	return nil
}

// checkFence returns relay.ErrStaleFence unless fence is 0 or the fence of
// the collection's lease, live at now.
func checkFence(txn *badger.Txn, c relay.Coll, fence uint64, now time.Time) error {
	if fence == 0 {
		return nil
	}
	l, ok, err := getLease(txn, c)
	if err != nil {
		return err
	}
	if !ok || l.Fence != fence || !l.Live(now) {
		return fmt.Errorf("append to %s/%s with fence %d: %w", c.Tenant, c.Collection, fence, relay.ErrStaleFence)
	}
	return nil
}

// appendSplit writes an append too large for one transaction in several,
// all under the collection's lock (held by the caller), so no other write
// to the collection (append, compaction, truncation, lease) comes between
// them. Why readers see all of it or nothing:
//
//   - The first transactions write only the log entries and tail keys,
//     with sequence numbers past the collection's head. Log reads nothing
//     past the head, and a record's tail nothing past its meta's seq: no
//     read and no cursor names them yet.
//   - One last transaction publishes them: it checks the fence again,
//     and writes the records' metas and candidate marks, the usage and the
//     head. Every read is one Badger transaction, a snapshot, so it sees
//     the old head and metas or the new ones, never a mix.
//   - The first transaction also writes a pending key naming the
//     sequence numbers, and the last deletes it. Until then the
//     unpublished entries are garbage if the append stops (a crash, an
//     error): the append clears them if it can, and otherwise the next
//     write to the collection does, or Open (clearPending). The next
//     append reuses their sequence numbers, which nothing ever saw.
//   - Each transaction is fsynced before the next is committed, so a
//     power loss cannot keep a later one (the head, or entries the
//     pending key does not name yet) without the earlier ones.
//
// Compaction and truncation only touch entries up to a record's meta's
// seq and the head, and run under the same lock, so they never meet an
// unpublished entry either.
func (s *Store) appendSplit(p *appendPlan) (err error) {
	pending := collKey("pending", p.c)
	txn := s.db.NewTransaction(true)
	n, k := 0, 0 // writes in txn; transactions committed
	crashed := false
	defer func() {
		txn.Discard()
		if err != nil && k > 0 && !crashed {
			err = s.clearAfterFailure(p.c, err)
		}
	}()
	// commit commits txn and starts the next, fsyncing what it wrote
	// unless it is the last (the caller, locked, fsyncs that one);
	// splitHook may stop the append after it, as if the process died
	// there.
	commit := func(last bool) error {
		if err := s.commit(p.c, txn); err != nil {
			return err
		}
		k++
		txn, n = s.db.NewTransaction(true), 0
		if s.splitHook != nil {
			if err := s.splitHook(k); err != nil {
				crashed = true
				s.markPending(p.c)
				return err
			}
		}
		if last {
			return nil
		}
		return s.syncPart()
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], p.first)
	binary.BigEndian.PutUint64(b[8:], p.last)
	if err := txn.Set(pending, b[:]); err != nil {
		return err
	}
	n++
	for _, w := range p.data {
		err := w.apply(txn)
		if errors.Is(err, badger.ErrTxnTooBig) && n > 0 {
			if err = commit(false); err == nil {
				err = w.apply(txn)
			}
		}
		if err != nil {
			return err // ErrTxnTooBig in an empty transaction: too large alone
		}
		n++
	}
	if err := commit(false); err != nil {
		return err
	}
	// The publishing transaction.
	if err := checkFence(txn, p.c, p.fence, p.now); err != nil {
		return err
	}
	head, err := getUint64(txn, collKey("head", p.c))
	if err != nil {
		return err
	}
	if head != p.first-1 {
		// Only another process writing the folder could do this, and
		// Badger's folder lock keeps any out.
		return fmt.Errorf("relay: append to %s/%s: the head moved from %d to %d while it was written", p.c.Tenant, p.c.Collection, p.first-1, head)
	}
	if err := txn.Delete(pending); err != nil {
		return err
	}
	if err := p.publish(txn); err != nil {
		return err // ErrTxnTooBig: too many records for one transaction
	}
	return commit(true)
}

// clearAfterFailure clears what a failed split append to c wrote, and
// returns err, the failure; if that fails too, the next write to c tries
// again.
func (s *Store) clearAfterFailure(c relay.Coll, err error) error {
	if cerr := s.clearPending(c); cerr != nil {
		s.markPending(c)
		s.opts.Logger.Warn("could not clear an append that failed; the next write to its collection will", "tenant", c.Tenant, "collection", c.Collection, "err", cerr)
	}
	return err
}

// markPending notes that c may hold an unpublished append's entries.
func (s *Store) markPending(c relay.Coll) {
	s.pendingMu.Lock()
	defer s.pendingMu.Unlock()
	if s.pending == nil {
		s.pending = map[relay.Coll]bool{}
	}
	s.pending[c] = true
}

// clearMarked clears c's unpublished entries if a failed append left
// some. The caller holds c's lock.
func (s *Store) clearMarked(c relay.Coll) error {
	s.pendingMu.Lock()
	marked := s.pending[c]
	s.pendingMu.Unlock()
	if !marked {
		return nil
	}
	if err := s.clearPending(c); err != nil {
		return fmt.Errorf("relay: clearing an append to %s/%s that failed: %w", c.Tenant, c.Collection, err)
	}
	s.pendingMu.Lock()
	delete(s.pending, c)
	s.pendingMu.Unlock()
	return nil
}

// clearPending deletes the log entries and tail keys of a split append to
// c that was never published, if its pending key says there is one, and
// then that key. It may take several transactions, each fsynced before
// the next; cut short, it runs again from the start, deleting what is
// left. The caller holds c's lock, or is Open, and fsyncs the last.
func (s *Store) clearPending(c relay.Coll) error {
	pending := collKey("pending", c)
	var first, last, head uint64
	found := false
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(pending)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		if err := item.Value(func(v []byte) error {
			if len(v) != 16 {
				return fmt.Errorf("%w: pending key of %s/%s holds %d bytes", errCorrupt, c.Tenant, c.Collection, len(v))
			}
			first, last = binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:])
			return nil
		}); err != nil {
			return err
		}
		head, err = getUint64(txn, collKey("head", c))
		return err
	})
	if err != nil || !found {
		return err
	}
	if first == 0 || first > last || head >= first {
		return fmt.Errorf("%w: pending append %d..%d to %s/%s, head %d", errCorrupt, first, last, c.Tenant, c.Collection, head)
	}
	txn := s.db.NewTransaction(true)
	defer func() { txn.Discard() }()
	n := 0
	del := func(key []byte) error {
		err := txn.Delete(key)
		if errors.Is(err, badger.ErrTxnTooBig) && n > 0 {
			if err = s.commit(c, txn); err == nil {
				err = s.syncPart()
			}
			if err != nil {
				return err
			}
			txn, n = s.db.NewTransaction(true), 0
			err = txn.Delete(key)
		}
		n++
		return err
	}
	for seq := first; seq <= last; seq++ {
		item, err := txn.Get(logKey(c, seq))
		if errors.Is(err, badger.ErrKeyNotFound) {
			continue // not written, or deleted by an earlier run
		}
		if err != nil {
			return err
		}
		var record string
		if err := item.Value(func(v []byte) error {
			d := newDecoder(v)
			record = string(d.field())
			return d.err
		}); err != nil {
			return fmt.Errorf("log entry %d: %w", seq, err)
		}
		// The tail key first: a run cut short finds the log entry again.
		if err := del(tailKey(c, record, seq)); err != nil {
			return err
		}
		if err := del(logKey(c, seq)); err != nil {
			return err
		}
	}
	if err := del(pending); err != nil {
		return err
	}
	return s.commit(c, txn)
}

// clearAllPending clears every collection's unpublished append: what a
// process that stopped in the middle of a split append left.
func (s *Store) clearAllPending() error {
	var colls []relay.Coll
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefixPending})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			c, ok := splitPendingKey(it.Item().Key())
			if !ok {
				return fmt.Errorf("%w: pending key %q", errCorrupt, it.Item().Key())
			}
			colls = append(colls, c)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, c := range colls {
		if err := s.clearPending(c); err != nil {
			return fmt.Errorf("clearing an append to %s/%s that a stop cut short: %w", c.Tenant, c.Collection, err)
		}
	}
	return nil
}
