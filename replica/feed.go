package replica

import (
	"sync"

	"github.com/ferrysync/ferry/crdt"
)

// EventKind says what happened to a record.
type EventKind int

const (
	Created EventKind = iota + 1 // new, or restored after a delete
	Updated
	Deleted
)

func (k EventKind) String() string {
	switch k {
	case Created:
		return "created"
	case Updated:
		return "updated"
	case Deleted:
		return "deleted"
	}
	return "unknown"
}

// Origin says where a change came from.
type Origin int

const (
	Local  Origin = iota + 1 // an edit on this replica
	Remote                   // changes received by sync
)

func (o Origin) String() string {
	if o == Local {
		return "local"
	}
	return "remote"
}

// Event is one committed change to one record.
type Event struct {
	Collection string
	ID         string
	Kind       EventKind
	Origin     Origin
	Heads      crdt.Heads // the record's version after the change
}

func (t *touched) event(local bool) (Event, bool) {
	if t.new.heads.Equal(t.old.heads) {
		return Event{}, false
	}
	if t.new.deleted && (!t.existed || t.wasDeleted) {
		// A tombstone for a record this replica never showed (created and
		// deleted elsewhere, or still deleted) changes nothing visible.
		return Event{}, false
	}
	ev := Event{Collection: t.coll, ID: t.id, Kind: Updated, Origin: Remote, Heads: t.new.heads}
	if local {
		ev.Origin = Local
	}
	switch {
	case t.new.deleted && !t.wasDeleted:
		ev.Kind = Deleted
	case !t.new.deleted && (!t.existed || t.wasDeleted):
		ev.Kind = Created
	}
	return ev, true
}

// Feed delivers a collection's events as they commit. Events of one record
// arrive in commit order. A reader that lets the buffer fill is cut off:
// C is closed and Err returns ErrFeedOverflow; subscribe again and rescan.
// Writers never wait for a feed.
type Feed struct {
	C <-chan Event

	c    chan Event
	coll string
	fs   *feeds
	err  error // set before c is closed; guarded by fs.mu
}

// Err returns why C was closed: nil after Close, ErrFeedOverflow, or
// ErrClosed when the replica closed.
func (f *Feed) Err() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	return f.err
}

// Close stops the feed and closes C. It is safe to call more than once.
func (f *Feed) Close() { f.fs.remove(f, nil) }

type feeds struct {
	mu     sync.Mutex
	byColl map[string]map[*Feed]struct{}
	closed error
}

func newFeeds() *feeds { return &feeds{byColl: map[string]map[*Feed]struct{}{}} }

func (fs *feeds) add(coll string, buffer int) *Feed {
	if buffer <= 0 {
		buffer = 256
	}
	c := make(chan Event, buffer)
	f := &Feed{C: c, c: c, coll: coll, fs: fs}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.closed != nil {
		f.err = fs.closed
		close(c)
		return f
	}
	if fs.byColl[coll] == nil {
		fs.byColl[coll] = map[*Feed]struct{}{}
	}
	fs.byColl[coll][f] = struct{}{}
	return f
}

func (fs *feeds) remove(f *Feed, why error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.removeLocked(f, why)
}

func (fs *feeds) removeLocked(f *Feed, why error) {
	set := fs.byColl[f.coll]
	if _, ok := set[f]; !ok {
		return
	}
	delete(set, f)
	f.err = why
	close(f.c)
}

func (fs *feeds) publish(events []Event) {
	if len(events) == 0 {
		return
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, ev := range events {
		for f := range fs.byColl[ev.Collection] {
			select {
			case f.c <- ev:
			default:
				fs.removeLocked(f, ErrFeedOverflow)
			}
		}
	}
}

func (fs *feeds) closeAll(why error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.closed = why
	for _, set := range fs.byColl {
		for f := range set {
			fs.removeLocked(f, why)
		}
	}
}
