package replica_test

import (
	"fmt"
	"testing"

	"github.com/ferrysync/ferry/replica"
)

// BenchmarkSelectIndex reads the records one index query selects (about
// 100 of 2,000, short values) through the index, with their read models.
func BenchmarkSelectIndex(b *testing.B) {
	r, err := replica.Open("", &replica.Options{InMemory: true})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	c := r.Collection("products")
	if err := c.EnsureIndex("by_cat_price", replica.IndexOptions{Fields: []string{"cat", "price"}}); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 2000; i++ {
		p := map[string]any{"cat": fmt.Sprintf("c%02d", i%10), "price": float64(i % 97), "name": fmt.Sprintf("product %d", i)}
		if err := c.Put(fmt.Sprintf("p%05d", i), p); err != nil {
			b.Fatal(err)
		}
	}
	q := replica.Query[map[string]any]{Index: "by_cat_price", Eq: []any{"c07"}, From: 20, To: 70}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		n := 0
		for _, err := range replica.Select(c, q) {
			if err != nil {
				b.Fatal(err)
			}
			n++
		}
		if n == 0 {
			b.Fatal("no rows")
		}
	}
}
