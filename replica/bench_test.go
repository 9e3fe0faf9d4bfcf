package replica_test

// Benchmarks of a replica on disk. Every figure is meant to be read against
// BenchmarkBaselineAutomergeImport: raw automerge-go loading small changes
// with LoadIncremental, the fastest way Automerge takes changes in, and a
// floor under what any record write or import costs.
//
//	go test -run='^$' -bench=. -benchtime=2s ./replica/

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/automerge/automerge-go"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/replica"
)

// benchProduct is a small record, typical of an app's table row.
type benchProduct struct {
	Name    string   `ferry:"name"`
	Price   float64  `ferry:"price"`
	Qty     int      `ferry:"qty"`
	Tags    []string `ferry:"tags"`
	Updated int64    `ferry:"updated"`
}

func benchNewProduct(i int) benchProduct {
	return benchProduct{
		Name:    fmt.Sprintf("product-%08d", i), // 16 characters
		Price:   float64(i%1000) + 0.99,
		Qty:     i % 100,
		Tags:    []string{"tea", "green", "loose"},
		Updated: 1_700_000_000_000 + int64(i),
	}
}

func benchOpen(b *testing.B, o *replica.Options) *replica.Replica {
	b.Helper()
	r, err := replica.Open(b.TempDir(), o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := r.Close(); err != nil {
			b.Error(err)
		}
	})
	return r
}

// benchStore opens a store in a fresh folder and returns its products.
func benchStore(b *testing.B, o *replica.Options) (*replica.Replica, *replica.Collection) {
	b.Helper()
	r := benchOpen(b, o)
	c := r.Collection("products")
	return r, c
}

// benchFill inserts n products into c, 100 to a unit of work to keep the
// setup short, and returns their IDs.
func benchFill(b *testing.B, r *replica.Replica, c *replica.Collection, n int) []string {
	b.Helper()
	ids := make([]string, 0, n)
	for len(ids) < n {
		start := len(ids)
		err := r.Write(func(tx *replica.Tx) error {
			for i := start; i < n && i < start+100; i++ {
				id, err := tx.Insert(c.Name(), benchNewProduct(i))
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return ids
}

// benchRate reports n per second of the timed part of the benchmark.
func benchRate(b *testing.B, n int, unit string) {
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), unit)
}

// benchChangeBytes returns how many bytes of Automerge changes edit adds to
// the record id, for b.SetBytes.
func benchChangeBytes(b *testing.B, c *replica.Collection, id string, edit func() error) int64 {
	b.Helper()
	heads, err := c.Heads(id)
	if err != nil {
		b.Fatal(err)
	}
	if err := edit(); err != nil {
		b.Fatal(err)
	}
	return int64(len(benchChangesSince(b, c, id, heads)))
}

// benchChangesSince returns the record's changes since heads (nil: all).
func benchChangesSince(b *testing.B, c *replica.Collection, id string, heads crdt.Heads) []byte {
	b.Helper()
	var ch []byte
	err := c.Update(id, func(d *crdt.Doc) (err error) {
		ch, err = d.ChangesSince(heads)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return ch
}

// benchInsertBytes returns how many bytes of Automerge changes one insert of
// a product stores, for b.SetBytes.
func benchInsertBytes(b *testing.B, c *replica.Collection) int64 {
	b.Helper()
	id, err := c.Insert(benchNewProduct(0))
	if err != nil {
		b.Fatal(err)
	}
	return int64(len(benchChangesSince(b, c, id, nil)))
}

// BenchmarkBaselineAutomergeImport loads 1000 single-field changes, made by
// one document, into a fresh automerge-go document with LoadIncremental.
func BenchmarkBaselineAutomergeImport(b *testing.B) {
	const n = 1000
	src := automerge.New()
	at := time.UnixMilli(1_700_000_000_000)
	for i := range n {
		if err := src.RootMap().Set("qty", int64(i)); err != nil {
			b.Fatal(err)
		}
		if _, err := src.Commit("", automerge.CommitOptions{Time: &at}); err != nil {
			b.Fatal(err)
		}
	}
	chs, err := src.Changes()
	if err != nil {
		b.Fatal(err)
	}
	data := automerge.SaveChanges(chs)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	var dst *automerge.Doc
	for b.Loop() {
		dst = automerge.New()
		if err := dst.LoadIncremental(data); err != nil {
			b.Fatal(err)
		}
	}
	benchRate(b, n*b.N, "changes/s")
	if got := len(dst.Heads()); got != 1 || dst.Heads()[0] != src.Heads()[0] {
		b.Fatalf("after LoadIncremental: heads %v, want %v", dst.Heads(), src.Heads())
	}
}

func benchInsert(b *testing.B, o *replica.Options) {
	_, c := benchStore(b, o)
	p := benchNewProduct(0)
	b.SetBytes(benchInsertBytes(b, c))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p.Qty = i
		if _, err := c.Insert(p); err != nil {
			b.Fatal(err)
		}
		i++
	}
	benchRate(b, b.N, "records/s")
}

func BenchmarkInsertDurable(b *testing.B) { benchInsert(b, nil) }

func BenchmarkInsertRelaxed(b *testing.B) { benchInsert(b, &replica.Options{Relaxed: true}) }

// BenchmarkInsertDurableParallel inserts from many goroutines. Each commit
// still waits for its fsync, but Badger writes the commits that queue up
// meanwhile together, with one fsync.
func BenchmarkInsertDurableParallel(b *testing.B) {
	_, c := benchStore(b, nil)
	b.SetBytes(benchInsertBytes(b, c))
	b.SetParallelism(8) // 8 writers per core: enough commits in flight to share an fsync
	b.ReportAllocs()
	var failed atomic.Pointer[error]
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		p := benchNewProduct(0)
		for pb.Next() {
			if _, err := c.Insert(p); err != nil {
				failed.CompareAndSwap(nil, &err)
				return
			}
		}
	})
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	benchRate(b, b.N, "records/s")
}

// BenchmarkUpdateField sets one field of existing records, in turn, durably.
// Records gain a chunk per update and are folded into a snapshot every
// Options.CompactAfter updates, which the figure includes.
func BenchmarkUpdateField(b *testing.B) {
	r, c := benchStore(b, nil)
	ids := benchFill(b, r, c, 1000)
	b.SetBytes(benchChangeBytes(b, c, ids[0], func() error {
		return c.Update(ids[0], func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, 1000) })
	}))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		qty := 1001 + i
		if err := c.Update(ids[i%len(ids)], func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, qty) }); err != nil {
			b.Fatal(err)
		}
		i++
	}
	benchRate(b, b.N, "records/s")
}

func benchGet(b *testing.B, o *replica.Options, n int) {
	r, c := benchStore(b, o)
	ids := benchFill(b, r, c, n)
	b.ReportAllocs()
	var p benchProduct
	i := 0
	for b.Loop() {
		if err := c.Get(ids[i%len(ids)], &p); err != nil {
			b.Fatal(err)
		}
		i++
	}
	benchRate(b, b.N, "records/s")
	if p.Name == "" || len(p.Tags) != 3 {
		b.Fatalf("Get decoded %+v", p)
	}
}

// BenchmarkGet reads records whose documents are cached.
func BenchmarkGet(b *testing.B) { benchGet(b, nil, 1000) }

// BenchmarkGetCold reads records in turn with a cache too small for one,
// so each Get loads the document from Badger.
func BenchmarkGetCold(b *testing.B) { benchGet(b, &replica.Options{CacheBytes: 1}, 2000) }

// BenchmarkScan pages through 1000 records, 100 a page.
func BenchmarkScan(b *testing.B) {
	r, c := benchStore(b, nil)
	benchFill(b, r, c, 1000)
	b.ReportAllocs()
	after, total := "", 0
	for b.Loop() {
		n, last := 0, ""
		for rec, err := range c.Scan(replica.ScanOptions{After: after, Limit: 100}) {
			if err != nil {
				b.Fatal(err)
			}
			n, last = n+1, rec.ID
		}
		total += n
		if n < 100 {
			after = ""
		} else {
			after = last
		}
	}
	benchRate(b, total, "records/s")
	if total < b.N*100/2 {
		b.Fatalf("%d scans returned %d records", b.N, total)
	}
}

// BenchmarkImport applies another replica's pending changes, record by
// record, durably: one Import is one record of several changes.
func BenchmarkImport(b *testing.B) {
	const records = 500
	sr, src := benchStore(b, &replica.Options{Relaxed: true})
	ids := benchFill(b, sr, src, records)
	changes := make([][]byte, records)
	perRecord, size := 0, 0
	for i, id := range ids {
		// An insert and four edits: five changes a record.
		edits := []func(d *crdt.Doc) error{
			func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, i+1) },
			func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 1.5) },
			func(d *crdt.Doc) error { return d.Set(crdt.Path{"tags", 1}, "black") },
			func(d *crdt.Doc) error { return d.Set(crdt.Path{"updated"}, int64(1_800_000_000_000)) },
		}
		for _, e := range edits {
			if err := src.Update(id, e); err != nil {
				b.Fatal(err)
			}
		}
		ch := benchChangesSince(b, src, id, nil)
		info, err := crdt.ParseChanges(ch)
		if err != nil {
			b.Fatal(err)
		}
		changes[i], perRecord, size = ch, len(info), size+len(ch)
	}
	if perRecord != 5 {
		b.Fatalf("%d changes a record, want 5", perRecord)
	}
	_, dst := benchStore(b, nil)
	b.SetBytes(int64(size / records))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		// A new ID each time: the same changes under an ID that has them
		// would be skipped as already held.
		if err := dst.Import("r"+strconv.Itoa(i), changes[i%records]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	benchRate(b, b.N, "records/s")
	benchRate(b, b.N*perRecord, "changes/s")
	var p benchProduct
	if err := dst.Get("r0", &p); err != nil || p.Qty != 1 || p.Tags[1] != "black" {
		b.Fatalf("imported record r0 = %+v, %v", p, err)
	}
}
