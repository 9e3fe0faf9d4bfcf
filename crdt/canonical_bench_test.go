package crdt

import (
	"testing"
	"time"
)

// BenchmarkCheckCanonical checks the canonical encoding of the changes a
// W3 merge carries: a record's creation (four fields) and an edit of one
// field over an earlier value.
func BenchmarkCheckCanonical(b *testing.B) {
	d, err := New("aa01")
	if err != nil {
		b.Fatal(err)
	}
	if err := d.Put(map[string]any{"name": "product", "price": 1.5, "qty": int64(7), "updated": int64(0)}); err != nil {
		b.Fatal(err)
	}
	if _, err := d.Commit("", time.Time{}); err != nil {
		b.Fatal(err)
	}
	created := d.Heads()
	create, err := d.ChangesSince(nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := d.Set(Path{"name"}, "name-12"); err != nil {
		b.Fatal(err)
	}
	if _, err := d.Commit("", time.Time{}); err != nil {
		b.Fatal(err)
	}
	edit, err := d.ChangesSince(created)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		chunk []byte
	}{{"create", create}, {"edit", edit}} {
		payload := chunkPayload(c.chunk)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := checkCanonical(payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
