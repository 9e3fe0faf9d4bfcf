package replica

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// nextRow reads the live query's next change; the test's deadline bounds
// the wait.
func nextRow[T any](t *testing.T, l *LiveQuery[T]) RowChange[T] {
	t.Helper()
	ch, ok := <-l.C
	if !ok {
		t.Fatalf("live query ended: %v", l.Err())
	}
	return ch
}

func TestWatchQuery(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil, "products"), e.device(nil, "products")
	ca, cb := a.Collection("products"), b.Collection("products")
	for _, c := range []*Collection{ca, cb} {
		if err := c.EnsureIndex("by_cat_price", IndexOptions{Fields: []string{"cat", "price"}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 6 {
		p := ixProduct{Name: fmt.Sprintf("p%d", i), Price: float64(i), Cat: []string{"tea", "coffee"}[i%2]}
		if err := ca.Put(fmt.Sprintf("p%d", i), p); err != nil {
			t.Fatal(err)
		}
	}
	// Tea under 5, whose name is not "skip".
	q := Query[ixProduct]{Index: "by_cat_price", Eq: []any{"tea"}, To: 5, Where: func(p *ixProduct) bool { return p.Name != "skip" }}
	l, err := WatchQuery(ca, q, 0)
	if err != nil {
		t.Fatal(err)
	}
	var first []string
	for range 3 { // p0, p2, p4
		ch := nextRow(t, l)
		if ch.Kind != Entered {
			t.Fatalf("initial row %v %s", ch.Kind, ch.Row.ID)
		}
		first = append(first, ch.Row.ID)
	}
	if !slices.Equal(first, []string{"p0", "p2", "p4"}) {
		t.Fatalf("initial rows %v", first)
	}
	expect := func(kind ChangeKind, id string) RowChange[ixProduct] {
		t.Helper()
		ch := nextRow(t, l)
		if ch.Kind != kind || ch.Row.ID != id {
			t.Fatalf("got %v %s, want %v %s", ch.Kind, ch.Row.ID, kind, id)
		}
		return ch
	}
	// Local edits: out of range, in range, within it, by the predicate,
	// a delete, and a write that changes nothing the query shows.
	set := func(id string, f map[string]any) {
		t.Helper()
		if err := ca.Put(id, f); err != nil {
			t.Fatal(err)
		}
	}
	set("p2", map[string]any{"price": 7.0})
	expect(Left, "p2")
	set("p1", map[string]any{"cat": "tea"})
	if ch := expect(Entered, "p1"); ch.Row.Value.Price != 1 {
		t.Fatalf("p1 entered as %+v", ch.Row.Value)
	}
	set("p1", map[string]any{"price": 1.5})
	if ch := expect(Changed, "p1"); ch.Row.Value.Price != 1.5 {
		t.Fatalf("p1 changed to %+v", ch.Row.Value)
	}
	set("p0", map[string]any{"name": "skip"})
	expect(Left, "p0")
	if err := ca.Delete("p4"); err != nil {
		t.Fatal(err)
	}
	expect(Left, "p4")
	set("p3", map[string]any{"price": 9.0}) // coffee: not in the query
	// A sync: b's edit comes in as a remote change.
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	if err := cb.Update("p5", func(d *crdt.Doc) error {
		if err := d.Set(crdt.Path{"cat"}, "tea"); err != nil {
			return err
		}
		return d.Set(crdt.Path{"price"}, 2.0)
	}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, b, "p")
	mustSync(t, a, "p")
	if ch := expect(Entered, "p5"); ch.Row.Value.Cat != "tea" || ch.Row.Value.Price != 2 {
		t.Fatalf("p5 from the sync: %+v", ch.Row.Value)
	}
	l.Close()
	if _, ok := <-l.C; ok {
		t.Fatal("C open after Close")
	}
	if err := l.Err(); err != nil {
		t.Fatalf("Err after Close = %v", err)
	}

	if _, err := WatchQuery(ca, Query[ixProduct]{Limit: 3}, 0); !errors.Is(err, ErrInvalidIndex) {
		t.Fatalf("a live query with a Limit: %v", err)
	}
	if _, err := WatchQuery(ca, Query[ixProduct]{Index: "nope"}, 0); !errors.Is(err, ErrInvalidIndex) {
		t.Fatalf("a live query of no index: %v", err)
	}
}

// A reader that falls behind is cut off with ErrFeedOverflow, and the
// writers never wait for it.
func TestWatchQueryOverflow(t *testing.T) {
	r := open(t, "", &Options{InMemory: true})
	c := r.Collection("c")
	l, err := WatchQuery(c, Query[map[string]any]{}, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 50 {
		if err := c.Put(fmt.Sprintf("r%02d", i), map[string]any{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for range l.C {
		n++
	}
	if err := l.Err(); !errors.Is(err, ErrFeedOverflow) || n >= 50 {
		t.Fatalf("after %d rows: %v, want ErrFeedOverflow", n, err)
	}
}
