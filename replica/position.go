package replica

import (
	"bytes"

	"github.com/dgraph-io/badger/v4"
)

// Position is a point in a replica's history of commits: every commit
// after it has a greater position. Positions only grow, also across
// restarts; they are not comparable between replicas.
type Position uint64

// Position returns the replica's position now: every commit that returned
// before the call is at or before it. Take it before a read, then watch
// from it with WatchFrom, and nothing committed between the read and the
// watch is missed.
func (r *Replica) Position() (Position, error) {
	release, err := r.enter()
	if err != nil {
		return 0, err
	}
	defer release()
	// A read transaction's timestamp waits for every commit below it.
	txn := r.db.NewTransaction(false)
	defer txn.Discard()
	return Position(txn.ReadTs()), nil
}

// WatchFrom is Watch, with a catch-up first: for each record of the
// collection changed after from, one event with the record's state now
// (Replayed set; Kind Updated or Deleted), then the events committed from
// then on, as Watch delivers them. Live events that commit during the
// catch-up wait for it (counting against the buffer), so a record's events
// still arrive in commit order. A change may come twice, replayed and live:
// compare Heads.
//
// The catch-up reads the store a page at a time as C is read; it is as
// long as the number of records changed since from.
//
//	pos, _ := r.Position()
//	for rec, err := range products.Scan(replica.ScanOptions{}) { ... }
//	feed := products.WatchFrom(pos, 0) // nothing edited since the scan is lost
func (c *Collection) WatchFrom(from Position, buffer int) *Feed {
	if c.err != nil {
		return c.r.feeds.add(c.name, buffer, func(func(Event) bool) error { return c.err })
	}
	return c.r.feeds.add(c.name, buffer, func(send func(Event) bool) error {
		return c.replay(from, send)
	})
}

// replay sends an event for each record whose meta changed after from:
// the newest version of each meta key past from, which is a delete marker
// for a record purged since.
func (c *Collection) replay(from Position, send func(Event) bool) error {
	prefix := collPrefix('r', c.name)
	start := prefix
	for {
		var page []Event
		var last []byte
		err := c.r.view(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, AllVersions: true, SinceTs: uint64(from)})
			defer it.Close()
			var prev []byte
			for it.Seek(start); it.Valid() && len(page) < scanPage; it.Next() {
				item := it.Item()
				if bytes.Equal(item.Key(), prev) {
					continue // an older version of the key just seen
				}
				prev = item.KeyCopy(prev)
				ev := Event{Collection: c.name, ID: string(prev[len(prefix):]), Kind: Updated, Replayed: true}
				if item.IsDeletedOrExpired() {
					ev.Kind = Deleted
				} else {
					err := item.Value(func(v []byte) error {
						m, err := decodeMeta(v)
						if err != nil {
							return err
						}
						ev.Heads = m.heads
						if m.deleted {
							ev.Kind = Deleted
						}
						return nil
					})
					if err != nil {
						return err
					}
				}
				page = append(page, ev)
			}
			if len(page) > 0 {
				last = recKey('r', c.name, page[len(page)-1].ID)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, ev := range page {
			if !send(ev) {
				return nil
			}
		}
		if len(page) < scanPage {
			return nil
		}
		// The next page starts just past the last key.
		start = append(last, 0)
	}
}
