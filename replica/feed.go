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
	switch o {
	case Local:
		return "local"
	case Remote:
		return "remote"
	}
	return "unknown"
}

// Event is one committed change to one record.
type Event struct {
	Collection string
	ID         string
	Kind       EventKind
	Origin     Origin
	Heads      crdt.Heads // the record's version after the change
	// Replayed marks an event of WatchFrom's catch-up: the record's
	// state now, for a record changed after the position. Its Kind is
	// Updated or Deleted (a record created since comes as Updated), and
	// its Origin is unknown (zero).
	Replayed bool
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
// C is closed and Err returns ErrFeedOverflow; watch again from a position
// taken before (WatchFrom) to miss nothing. Writers never wait for a feed.
// A Feed is safe for concurrent use; C has one reader.
type Feed struct {
	C <-chan Event

	c    chan Event
	coll string
	fs   *feeds

	// Guarded by fs.mu.
	err     error // set before c is closed
	removed bool
	// While a WatchFrom replay runs, live events wait in pending (at most
	// the buffer's size) and done tells the replay to stop; the replay's
	// goroutine closes c.
	replaying bool
	pending   []Event
	done      chan struct{}
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
	wg     sync.WaitGroup // replays under way
}

func newFeeds() *feeds { return &feeds{byColl: map[string]map[*Feed]struct{}{}} }

// add subscribes a feed. With replay, the feed first delivers what replay
// sends (on a goroutine of its own), holding live events until it is done.
func (fs *feeds) add(coll string, buffer int, replay func(send func(Event) bool) error) *Feed {
	if buffer <= 0 {
		buffer = 256
	}
	c := make(chan Event, buffer)
	f := &Feed{C: c, c: c, coll: coll, fs: fs}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.closed != nil {
		f.err, f.removed = fs.closed, true
		close(c)
		return f
	}
	if fs.byColl[coll] == nil {
		fs.byColl[coll] = map[*Feed]struct{}{}
	}
	fs.byColl[coll][f] = struct{}{}
	if replay != nil {
		f.replaying, f.done = true, make(chan struct{})
		fs.wg.Add(1)
		go fs.replay(f, replay)
	}
	return f
}

// replay runs a feed's catch-up, then the live events held meanwhile, in
// order, and turns the feed live. It owns c until then.
func (fs *feeds) replay(f *Feed, replay func(send func(Event) bool) error) {
	defer fs.wg.Done()
	send := func(ev Event) bool {
		select {
		case f.c <- ev:
			return true
		case <-f.done:
			return false
		}
	}
	err := replay(send)
	for err == nil {
		fs.mu.Lock()
		if f.removed {
			fs.mu.Unlock()
			break
		}
		held := f.pending
		f.pending = nil
		if len(held) == 0 {
			f.replaying = false // from now on, publish sends to c
			fs.mu.Unlock()
			return
		}
		fs.mu.Unlock()
		for _, ev := range held {
			if !send(ev) {
				break
			}
		}
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if !f.removed {
		delete(fs.byColl[f.coll], f)
		f.err, f.removed = err, true
	}
	f.replaying, f.pending = false, nil
	close(f.c)
}

func (fs *feeds) remove(f *Feed, why error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.removeLocked(f, why)
}

func (fs *feeds) removeLocked(f *Feed, why error) {
	if f.removed {
		return
	}
	delete(fs.byColl[f.coll], f)
	f.err, f.removed = why, true
	if f.replaying {
		close(f.done) // the replay closes c
		return
	}
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
			if f.replaying {
				if len(f.pending) == cap(f.c) {
					fs.removeLocked(f, ErrFeedOverflow)
				} else {
					f.pending = append(f.pending, ev)
				}
				continue
			}
			select {
			case f.c <- ev:
			default:
				fs.removeLocked(f, ErrFeedOverflow)
			}
		}
	}
}

// closeAll closes every feed and waits for the replays under way.
func (fs *feeds) closeAll(why error) {
	fs.mu.Lock()
	fs.closed = why
	for _, set := range fs.byColl {
		for f := range set {
			fs.removeLocked(f, why)
		}
	}
	fs.mu.Unlock()
	fs.wg.Wait()
}
