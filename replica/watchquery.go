package replica

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/ferrysync/ferry/crdt"
)

// ChangeKind says how a row of a live query changed.
type ChangeKind int

const (
	Entered ChangeKind = iota + 1 // the record now matches the query
	Changed                       // it still matches, at a new version
	Left                          // it no longer matches, or is deleted
)

func (k ChangeKind) String() string {
	switch k {
	case Entered:
		return "entered"
	case Changed:
		return "changed"
	case Left:
		return "left"
	}
	return "unknown"
}

// RowChange is one change to a live query's rows. For Left, Row holds the
// record as it is now (its Value is the zero T when the record is
// deleted).
type RowChange[T any] struct {
	Kind ChangeKind
	Row  Row[T]
}

// LiveQuery is a query kept up to date: C first delivers an Entered for
// each record the query selects, then the rows that enter, change and
// leave it as local edits and syncs commit, in commit order per record.
// It runs on a goroutine of its own, outside every lock, over a Feed of
// the collection; a reader that falls behind by more than the buffer is
// cut off as a Feed's is: C is closed and Err returns ErrFeedOverflow.
// Close it when done. A LiveQuery is safe for concurrent use; C has one
// reader.
type LiveQuery[T any] struct {
	C <-chan RowChange[T]

	feed *Feed
	stop chan struct{} // closed by Close
	once sync.Once
	done chan struct{}
	mu   sync.Mutex
	err  error
}

// Err returns why C was closed: nil after Close, ErrFeedOverflow,
// ErrClosed when the replica closed, or a read's error.
func (l *LiveQuery[T]) Err() error {
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Close stops the query and closes C, and returns once its goroutine has.
func (l *LiveQuery[T]) Close() {
	l.once.Do(func() { close(l.stop) })
	l.feed.Close()
	<-l.done
}

// WatchQuery subscribes to q: see LiveQuery. The rows are the records q
// selects (Index with Eq, From and To, and Where); q.Limit, q.After and
// q.Desc order and page a Select, and a live query does not take them
// (ErrInvalidIndex). buffer sizes C and the feed under it (0: 256).
//
// Where runs on the live query's goroutine, for each record that changes,
// with no lock held.
func WatchQuery[T any](c *Collection, q Query[T], buffer int) (*LiveQuery[T], error) {
	if q.Limit != 0 || q.After != "" || q.Desc {
		return nil, fmt.Errorf("%w: a live query takes no Limit, After or Desc", ErrInvalidIndex)
	}
	if buffer <= 0 {
		buffer = 256
	}
	match, err := c.matcher(q.Index, q.Eq, q.From, q.To)
	if err != nil {
		return nil, err
	}
	pos, err := c.r.Position()
	if err != nil {
		return nil, err
	}
	// The rows now, then every change since pos: a record changed in
	// between comes again, and its heads tell.
	var initial []Row[T]
	for row, err := range Select(c, q) {
		if err != nil {
			return nil, err
		}
		initial = append(initial, row)
	}
	out := make(chan RowChange[T], buffer)
	l := &LiveQuery[T]{C: out, feed: c.WatchFrom(pos, buffer), stop: make(chan struct{}), done: make(chan struct{})}
	go l.run(c, q, match, initial, out)
	return l, nil
}

func (l *LiveQuery[T]) run(c *Collection, q Query[T], match func(id string, fields map[string]any) bool, initial []Row[T], out chan<- RowChange[T]) {
	defer close(l.done)
	defer close(out)
	fail := func(err error) {
		l.mu.Lock()
		l.err = err
		l.mu.Unlock()
		l.feed.Close()
	}
	rows := map[string]crdt.Heads{}
	// A reader that falls behind holds this goroutine here, and the
	// feed under it overflows: that is what cuts the reader off.
	send := func(ch RowChange[T]) bool {
		select {
		case out <- ch:
			return true
		case <-l.stop:
			return false
		}
	}
	for _, row := range initial {
		rows[row.ID] = row.Heads
		if !send(RowChange[T]{Kind: Entered, Row: row}) {
			return
		}
	}
	for ev := range l.feed.C {
		row, in, err := liveRow(c, q, match, ev.ID)
		if err != nil {
			fail(err)
			return
		}
		heads, was := rows[ev.ID]
		var ch RowChange[T]
		switch {
		case in && !was:
			ch = RowChange[T]{Kind: Entered, Row: row}
		case in && !heads.Equal(row.Heads):
			ch = RowChange[T]{Kind: Changed, Row: row}
		case !in && was:
			ch = RowChange[T]{Kind: Left, Row: row}
		default:
			continue
		}
		if in {
			rows[ev.ID] = row.Heads
		} else {
			delete(rows, ev.ID)
		}
		if !send(ch) {
			return
		}
	}
	if err := l.feed.Err(); err != nil {
		l.mu.Lock()
		l.err = err
		l.mu.Unlock()
	}
}

// liveRow reads a record for a live query: its row, and whether the query
// selects it.
func liveRow[T any](c *Collection, q Query[T], match func(id string, fields map[string]any) bool, id string) (Row[T], bool, error) {
	row := Row[T]{ID: id, Cursor: id}
	v, err := c.current(id)
	if errors.Is(err, ErrNotFound) {
		return row, false, nil // purged
	}
	if err != nil {
		return row, false, err
	}
	row.Heads = v.heads
	if v.deleted {
		return row, false, nil
	}
	fields, err := v.plainFields()
	if err != nil {
		return row, false, err
	}
	// Decoded even when it leaves the query: a Left row shows the record
	// as it is now.
	if err := v.decode(&row.Value); err != nil {
		return row, false, fmt.Errorf("ferry: %s/%s: %w", c.name, id, err)
	}
	if !match(id, fields) {
		return row, false, nil
	}
	if q.Where != nil && !q.Where(&row.Value) {
		return row, false, nil
	}
	return row, true, nil
}

// matcher returns whether a record's fields fall in an index query's
// range (always true without an index).
func (c *Collection) matcher(index string, eq []any, from, to any) (func(id string, fields map[string]any) bool, error) {
	if c.err != nil {
		return nil, c.err
	}
	if index == "" {
		if eq != nil || from != nil || to != nil {
			return nil, fmt.Errorf("%w: Eq, From and To need an Index", ErrInvalidIndex)
		}
		return func(string, map[string]any) bool { return true }, nil
	}
	c.r.idx.mu.RLock()
	defs := c.r.idx.of(c.name)
	c.r.idx.mu.RUnlock()
	i := slices.IndexFunc(defs, func(d indexDef) bool { return d.Name == index })
	if i < 0 {
		return nil, fmt.Errorf("%w: %s has no index %q", ErrInvalidIndex, c.name, index)
	}
	def := defs[i]
	lo, hi, err := indexRange(c.name, def, eq, from, to)
	if err != nil {
		return nil, err
	}
	return func(id string, fields map[string]any) bool {
		k := fullIndexKey(c.name, def, fields, id)
		return bytes.Compare(k, lo) >= 0 && bytes.Compare(k, hi) < 0
	}, nil
}
