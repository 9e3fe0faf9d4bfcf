package replica

import (
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

type product struct {
	Name  string   `ferry:"name"`
	Price float64  `ferry:"price"`
	Qty   int      `ferry:"qty"`
	Tags  []string `ferry:"tags,omitempty"`
}

func TestSmoke(t *testing.T) {
	r, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, _ := r.Collection("products")
	id, err := c.Insert(product{Name: "Tea", Price: 2.5, Qty: 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, 4) }); err != nil {
		t.Fatal(err)
	}
	var p product
	if err := c.Get(id, &p); err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", p)
	if p.Qty != 4 || p.Name != "Tea" {
		t.Fatalf("got %+v", p)
	}
	for i := 0; i < 70; i++ {
		if err := c.Put(id, product{Name: "Tea", Price: float64(i), Qty: i}); err != nil {
			t.Fatal(err)
		}
	}
	r.cache.drop(cacheKey("products", id))
	if err := c.Get(id, &p); err != nil || p.Qty != 69 {
		t.Fatalf("got %+v %v", p, err)
	}
	n, _ := c.PendingCount()
	ch, heads, _, err := c.PendingChanges(id)
	t.Log(n, len(ch), heads, err)
	if err := c.Acknowledge(id, heads); err != nil {
		t.Fatal(err)
	}
	n, _ = c.PendingCount()
	if n != 0 {
		t.Fatal("still pending")
	}
}
