package replica_test

import (
	"fmt"
	"log"
	"os"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/replica"
)

type Product struct {
	Name  string       `ferry:"name"`
	Price float64      `ferry:"price"`
	Stock crdt.Counter `ferry:"stock"` // concurrent increments add up
	Notes crdt.Text    `ferry:"notes"` // concurrent edits merge by character
}

// Embedding a replica: open a store, write and read records, group writes
// into a unit of work, and see which records wait to be synced.
func Example() {
	dir, _ := os.MkdirTemp("", "ferry-example")
	defer os.RemoveAll(dir)

	r, err := replica.Open(dir, nil) // durable: every write is fsynced
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	products := r.Collection("products")
	id, err := products.Insert(Product{Name: "Green tea", Price: 4.5, Stock: 10})
	if err != nil {
		log.Fatal(err)
	}

	// Edit a field in place: only the change is stored and synced.
	err = products.Update(id, func(d *crdt.Doc) error {
		return d.Increment(crdt.Path{"stock"}, -3)
	})
	if err != nil {
		log.Fatal(err)
	}

	// Several writes that commit together or not at all.
	err = r.Write(func(tx *replica.Tx) error {
		if err := tx.Put("products", id, Product{Name: "Green tea", Price: 4.9, Stock: 7}); err != nil {
			return err
		}
		_, err := tx.Insert("audit", map[string]any{"product": id, "action": "reprice"})
		return err
	})
	if err != nil {
		log.Fatal(err)
	}

	var p Product
	if err := products.Get(id, &p); err != nil {
		log.Fatal(err)
	}
	pending, _ := products.PendingCount()
	fmt.Printf("%s: %.2f, %d in stock, %d record(s) to sync\n", p.Name, p.Price, p.Stock, pending)
	// Output: Green tea: 4.90, 7 in stock, 1 record(s) to sync
}
