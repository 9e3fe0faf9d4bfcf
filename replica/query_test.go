package replica_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/replica"
)

func memReplica(t *testing.T) *replica.Replica {
	t.Helper()
	r, err := replica.Open("", &replica.Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

type product struct {
	Name  string    `ferry:"name"`
	Price float64   `ferry:"price"`
	Qty   int64     `ferry:"qty"`
	Cat   string    `ferry:"cat"`
	Notes crdt.Text `ferry:"notes,omitempty"`
}

// seedProducts writes n products p000, p001, ...: price i/10, category
// c(i%5).
func seedProducts(t *testing.T, c *replica.Collection, n int) {
	t.Helper()
	for i := range n {
		p := product{Name: fmt.Sprintf("product %d", i), Price: float64(i) / 10, Qty: int64(i), Cat: fmt.Sprintf("c%d", i%5)}
		if err := c.Put(fmt.Sprintf("p%03d", i), p); err != nil {
			t.Fatal(err)
		}
	}
}

func selectIDs[T any](t *testing.T, c *replica.Collection, q replica.Query[T]) ([]string, []replica.Row[T]) {
	t.Helper()
	var ids []string
	var rows []replica.Row[T]
	for row, err := range replica.Select(c, q) {
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, row.ID)
		rows = append(rows, row)
	}
	return ids, rows
}

func TestSelectWhere(t *testing.T) {
	r := memReplica(t)
	c := r.Collection("products")
	seedProducts(t, c, 600) // past a page
	if err := c.Delete("p005"); err != nil {
		t.Fatal(err)
	}
	if err := c.Update("p010", func(d *crdt.Doc) error { return d.SpliceText(crdt.Path{"notes"}, 0, 0, "green") }); err != nil {
		t.Fatal(err)
	}
	cheap := replica.Query[product]{Where: func(p *product) bool { return p.Cat == "c0" && p.Price < 5 }}
	ids, rows := selectIDs(t, c, cheap)
	want := []string{"p000", "p010", "p015", "p020", "p025", "p030", "p035", "p040", "p045"}
	if !slices.Equal(ids, want) {
		t.Fatalf("Select(c0, price < 5) = %v, want %v (p005 is deleted)", ids, want)
	}
	if got := rows[1].Value; got.Name != "product 10" || got.Qty != 10 || got.Notes != "green" {
		t.Fatalf("p010 decoded as %+v", got)
	}
	if heads, err := c.Heads("p010"); err != nil || !heads.Equal(rows[1].Heads) {
		t.Fatalf("row heads %v, record's %v (%v)", rows[1].Heads, heads, err)
	}

	// Every record, no predicate.
	all, _ := selectIDs(t, c, replica.Query[product]{})
	if len(all) != 599 {
		t.Fatalf("Select() = %d records, want 599", len(all))
	}

	// Limit and cursor page through the same rows.
	var paged []string
	q := cheap
	q.Limit = 4
	for {
		ids, rows := selectIDs(t, c, q)
		paged = append(paged, ids...)
		if len(ids) < q.Limit {
			break
		}
		q.After = rows[len(rows)-1].Cursor
	}
	if !slices.Equal(paged, want) {
		t.Fatalf("paged by 4: %v, want %v", paged, want)
	}

	// Into a map, kinds as Get gives them.
	for row, err := range replica.Select(c, replica.Query[map[string]any]{Limit: 1, After: "p009"}) {
		if err != nil || row.ID != "p010" || row.Value["notes"] != "green" || row.Value["qty"] != int64(10) {
			t.Fatalf("Select into a map: %v %+v %v", row.ID, row.Value, err)
		}
	}
}

// A record that does not decode into T ends the iteration with ErrType,
// as Get fails; stopping the loop early stops the reads.
func TestSelectErrors(t *testing.T) {
	r := memReplica(t)
	c := r.Collection("products")
	seedProducts(t, c, 3)
	if err := c.Put("p001", map[string]any{"qty": "many"}); err != nil {
		t.Fatal(err)
	}
	var got []string
	var last error
	for row, err := range replica.Select(c, replica.Query[product]{}) {
		if err != nil {
			last = err
			continue
		}
		got = append(got, row.ID)
	}
	if !errors.Is(last, crdt.ErrType) || !slices.Equal(got, []string{"p000"}) {
		t.Fatalf("Select over a bad record: rows %v, error %v; want p000 then ErrType", got, last)
	}
	n := 0
	for range replica.Select(c, replica.Query[map[string]any]{}) {
		n++
		break
	}
	if n != 1 {
		t.Fatal("break did not stop the loop")
	}
	bad := r.Collection("no/slash")
	for _, err := range replica.Select(bad, replica.Query[product]{}) {
		if !errors.Is(err, replica.ErrInvalidName) {
			t.Fatalf("Select on a bad collection name: %v", err)
		}
	}
}

// Where runs outside every lock and store transaction: it may write to
// the replica, even to the record it is looking at, without deadlock.
func TestSelectWhereMayWrite(t *testing.T) {
	r := memReplica(t)
	c := r.Collection("products")
	seedProducts(t, c, 300)
	seen := 0
	q := replica.Query[product]{Where: func(p *product) bool {
		seen++
		return c.Put(fmt.Sprintf("p%03d", p.Qty), map[string]any{"seen": true}) == nil
	}}
	ids, _ := selectIDs(t, c, q)
	if len(ids) != 300 || seen != 300 {
		t.Fatalf("Select with writes in Where: %d rows, %d calls", len(ids), seen)
	}
	var m map[string]any
	if err := c.Get("p299", &m); err != nil || m["seen"] != true {
		t.Fatalf("Get(p299) = %v, %v", m, err)
	}
}
