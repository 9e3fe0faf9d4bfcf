package crdt_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/automerge/automerge-go"
	"github.com/ferrysync/ferry/crdt"
)

const benchChanges = 1000

// smallChanges returns benchChanges small changes by one actor (each sets
// one field of a record), as one stream of change chunks.
func smallChanges(b *testing.B) []byte {
	b.Helper()
	d := newDoc(b, actorA)
	for i := range benchChanges {
		set(b, d, crdt.Path{fmt.Sprint("f", i%10)}, i)
		commit(b, d)
	}
	data, err := d.ChangesSince(nil)
	if err != nil {
		b.Fatal(err)
	}
	return data
}

func reportChanges(b *testing.B, perOp int) {
	b.ReportMetric(float64(perOp)*float64(b.N)/b.Elapsed().Seconds(), "changes/s")
}

// BenchmarkRawAutomergeLoadIncremental is the floor for Import: automerge-go
// alone, no framing or checks.
func BenchmarkRawAutomergeLoadIncremental(b *testing.B) {
	data := smallChanges(b)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		d := automerge.New()
		if err := d.LoadIncremental(data); err != nil {
			b.Fatal(err)
		}
		if len(d.Heads()) != 1 {
			b.Fatal("not applied")
		}
	}
	reportChanges(b, benchChanges)
}

// BenchmarkImport is the same bytes through crdt: the ratio to the raw
// benchmark is the cost of framing, checksums and dependency checks.
func BenchmarkImport(b *testing.B) {
	data := smallChanges(b)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		d, err := crdt.New(actorB)
		if err != nil {
			b.Fatal(err)
		}
		if n, err := d.Import(data); n != benchChanges || err != nil {
			b.Fatal(n, err)
		}
	}
	reportChanges(b, benchChanges)
}

// BenchmarkImportKnown imports changes the document already holds (a
// repeated delivery).
func BenchmarkImportKnown(b *testing.B) {
	data := smallChanges(b)
	d := newDoc(b, actorB)
	if _, err := d.Import(data); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if n, err := d.Import(data); n != 0 || err != nil {
			b.Fatal(n, err)
		}
	}
	reportChanges(b, benchChanges)
}

type benchProduct struct {
	Name    string   `ferry:"name"`
	Price   float64  `ferry:"price"`
	Qty     int      `ferry:"qty"`
	Tags    []string `ferry:"tags"`
	Updated int64    `ferry:"updated"`
}

func BenchmarkPutStruct(b *testing.B) {
	p := benchProduct{Name: "lamp", Price: 19.5, Qty: 3, Tags: []string{"home", "light"}, Updated: 1_700_000_000_000}
	b.Run("new", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			d, _ := crdt.New(actorA)
			if err := d.Put(p); err != nil {
				b.Fatal(err)
			}
			if _, err := d.Commit("", time.Time{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unchanged", func(b *testing.B) {
		d := newDoc(b, actorA)
		if err := d.Put(p); err != nil {
			b.Fatal(err)
		}
		commit(b, d)
		b.ReportAllocs()
		for b.Loop() {
			if err := d.Put(p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("one-field", func(b *testing.B) {
		d := newDoc(b, actorA)
		if err := d.Put(p); err != nil {
			b.Fatal(err)
		}
		commit(b, d)
		q := p
		b.ReportAllocs()
		for b.Loop() {
			q.Updated++
			if err := d.Put(q); err != nil {
				b.Fatal(err)
			}
			if ok, err := d.Commit("", time.Time{}); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
	b.Run("decode", func(b *testing.B) {
		d := newDoc(b, actorA)
		if err := d.Put(p); err != nil {
			b.Fatal(err)
		}
		commit(b, d)
		b.ReportAllocs()
		for b.Loop() {
			var q benchProduct
			if err := d.Decode(&q); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkDiff3(b *testing.B) {
	base := newDoc(b, actorA)
	m := map[string]any{"address": map[string]any{"city": "Oslo", "zip": "0150"}, "body": crdt.Text("some text"), "tags": []string{"a", "b"}}
	for i := range 20 {
		m[fmt.Sprint("f", i)] = i
	}
	if err := base.Put(m); err != nil {
		b.Fatal(err)
	}
	commit(b, base)
	local, remote := fork(b, base, actorB), fork(b, base, actorC)
	set(b, local, crdt.Path{"f1"}, "local")
	set(b, remote, crdt.Path{"f1"}, "remote")
	set(b, local, crdt.Path{"f2"}, "local")
	set(b, remote, crdt.Path{"address", "city"}, "Bergen")
	if err := local.SpliceText(crdt.Path{"body"}, 0, 0, "x"); err != nil {
		b.Fatal(err)
	}
	if err := remote.SpliceText(crdt.Path{"body"}, 1, 0, "y"); err != nil {
		b.Fatal(err)
	}
	commit(b, local)
	commit(b, remote)
	b.ReportAllocs()
	for b.Loop() {
		fd, err := crdt.Diff3(base, local, remote)
		if err != nil || len(fd.Conflicts) != 1 {
			b.Fatal(fd, err)
		}
	}
}

func BenchmarkChangesSince(b *testing.B) {
	d := newDoc(b, actorA)
	var heads []crdt.Heads
	for i := range benchChanges {
		set(b, d, crdt.Path{fmt.Sprint("f", i%10)}, i)
		commit(b, d)
		heads = append(heads, d.Heads())
	}
	for _, back := range []int{1, 10, benchChanges} {
		since := crdt.Heads(nil)
		if back < benchChanges {
			since = heads[benchChanges-1-back]
		}
		b.Run(fmt.Sprintf("last-%d", back), func(b *testing.B) {
			b.ReportAllocs()
			var size int
			for b.Loop() {
				data, err := d.ChangesSince(since)
				if err != nil {
					b.Fatal(err)
				}
				size = len(data)
			}
			b.SetBytes(int64(size))
			reportChanges(b, back)
		})
	}
}

// longHistory returns a saved record whose history is n small changes (each
// sets one of ten fields), as the relay holds a busy record.
func longHistory(b *testing.B, n int) []byte {
	b.Helper()
	d := newDoc(b, actorA)
	for i := range n {
		set(b, d, crdt.Path{fmt.Sprint("f", i%10)}, i)
		commit(b, d)
	}
	return d.Save()
}

// BenchmarkImportOne imports one small change (a field set, from another
// actor) into a record with a long history. "check" is Import with its
// canonical-encoding and operation checks, the index warm; "saveload" adds
// what the relay did instead before those checks existed: Save the whole
// document and Load it again; "first" is the first Import into a freshly
// loaded document, which builds the index from the history.
func BenchmarkImportOne(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		saved := longHistory(b, n)
		setup := func(b *testing.B) (target, src *crdt.Doc, next func() []byte) {
			target, err := crdt.Load(saved, actorB)
			if err != nil {
				b.Fatal(err)
			}
			if src, err = crdt.Load(saved, actorC); err != nil {
				b.Fatal(err)
			}
			i := 0
			next = func() []byte {
				i++
				set(b, src, crdt.Path{fmt.Sprint("f", i%10)}, -i)
				commit(b, src)
				return crdt.LastChange(src)
			}
			return target, src, next
		}
		b.Run(fmt.Sprintf("history=%d/check", n), func(b *testing.B) {
			target, _, next := setup(b)
			if _, err := target.Import(next()); err != nil { // builds the index
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				c := next()
				b.StartTimer()
				if n, err := target.Import(c); n != 1 || err != nil {
					b.Fatal(n, err)
				}
			}
		})
		b.Run(fmt.Sprintf("history=%d/saveload", n), func(b *testing.B) {
			target, _, next := setup(b)
			if _, err := target.Import(next()); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				c := next()
				b.StartTimer()
				if n, err := target.Import(c); n != 1 || err != nil {
					b.Fatal(n, err)
				}
				if _, err := crdt.Load(target.Save(), ""); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("history=%d/first", n), func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				b.StopTimer()
				target, _, next := setup(b)
				c := next()
				b.StartTimer()
				if n, err := target.Import(c); n != 1 || err != nil {
					b.Fatal(n, err)
				}
			}
		})
	}
}

// histories caches longHistory's documents across benchmarks: building
// 10,000 changes takes seconds.
var histories = map[int][]byte{}

func cachedHistory(b *testing.B, n int) []byte {
	b.Helper()
	if h, ok := histories[n]; ok {
		return h
	}
	histories[n] = longHistory(b, n)
	return histories[n]
}

// BenchmarkLongHistory measures the calls a replica and the relay make for
// each small change, against the length of the record's history: they
// should cost what the change costs, whatever came before it.
//
//   - changes-since: ChangesSince(the heads before the last change), what a
//     replica stores after a commit and a relay after a push;
//   - commit-delta: one field set, Commit, then ChangesSince(the heads
//     before), a replica's local write;
//   - import: Import of one small change from another actor, with nothing
//     else happening to the document (the relay's case);
//   - import-after-commit: the same, after a local commit (a replica that
//     both writes and receives), so Import's indexes must catch up with
//     the local change first.
func BenchmarkLongHistory(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		saved := cachedHistory(b, n)
		load := func(b *testing.B, actor string) *crdt.Doc {
			d, err := crdt.Load(saved, actor)
			if err != nil {
				b.Fatal(err)
			}
			return d
		}
		b.Run(fmt.Sprintf("changes-since/history=%d", n), func(b *testing.B) {
			d := load(b, actorA)
			before := d.Heads()
			set(b, d, crdt.Path{"f0"}, -1)
			commit(b, d)
			b.ReportAllocs()
			for b.Loop() {
				data, err := d.ChangesSince(before)
				if err != nil || len(data) == 0 {
					b.Fatal(len(data), err)
				}
			}
		})
		b.Run(fmt.Sprintf("commit-delta/history=%d", n), func(b *testing.B) {
			d := load(b, actorA)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				before := d.Heads()
				set(b, d, crdt.Path{fmt.Sprint("f", i%10)}, -i)
				commit(b, d)
				data, err := d.ChangesSince(before)
				if err != nil || len(data) == 0 {
					b.Fatal(len(data), err)
				}
			}
		})
		importBench := func(b *testing.B, localCommit bool) {
			target, src := load(b, actorB), load(b, actorC)
			i := 0
			next := func() []byte {
				i++
				set(b, src, crdt.Path{fmt.Sprint("g", i%10)}, i)
				commit(b, src)
				return crdt.LastChange(src)
			}
			// The first Import indexes the history: not what is measured.
			if _, err := target.Import(next()); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				c := next()
				if localCommit {
					set(b, target, crdt.Path{fmt.Sprint("h", i%10)}, i)
					commit(b, target)
				}
				b.StartTimer()
				if n, err := target.Import(c); n != 1 || err != nil {
					b.Fatal(n, err)
				}
			}
		}
		b.Run(fmt.Sprintf("import/history=%d", n), func(b *testing.B) { importBench(b, false) })
		b.Run(fmt.Sprintf("import-after-commit/history=%d", n), func(b *testing.B) { importBench(b, true) })
	}
}

// BenchmarkAutomergeCalls measures the automerge-go calls crdt's per-change
// paths are built from, against the length of the history: looking a
// change up by its hash (AMgetChangeByHash) and reading the heads should
// not depend on it, while Changes(since) (AMgetChanges) walks every
// ancestor of since to build a vector clock.
func BenchmarkAutomergeCalls(b *testing.B) {
	for _, n := range []int{100, 10000} {
		am, err := automerge.Load(cachedHistory(b, n))
		if err != nil {
			b.Fatal(err)
		}
		heads := am.Heads()
		last, err := am.Change(heads[0])
		if err != nil {
			b.Fatal(err)
		}
		before := last.Dependencies()
		b.Run(fmt.Sprintf("change-by-hash/history=%d", n), func(b *testing.B) {
			for b.Loop() {
				c, err := am.Change(heads[0])
				if err != nil || len(c.Save()) == 0 {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("heads/history=%d", n), func(b *testing.B) {
			for b.Loop() {
				if len(am.Heads()) != 1 {
					b.Fatal("heads")
				}
			}
		})
		b.Run(fmt.Sprintf("changes-since/history=%d", n), func(b *testing.B) {
			for b.Loop() {
				if chs, err := am.Changes(before...); len(chs) != 1 || err != nil {
					b.Fatal(len(chs), err)
				}
			}
		})
	}
}

// BenchmarkIndexMemory reports the Go heap an operation index takes on a
// record of 10,000 changes (each sets one field): per indexed operation,
// and as MemSize estimates it.
func BenchmarkIndexMemory(b *testing.B) {
	saved := cachedHistory(b, 10000)
	var perOp, estimate float64
	for b.Loop() {
		d, err := crdt.Load(saved, actorA)
		if err != nil {
			b.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		if err := crdt.BuildIndex(d); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		n := crdt.IndexedOps(d)
		perOp = float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
		estimate = float64(d.MemSize()) / float64(n)
		runtime.KeepAlive(d)
	}
	b.ReportMetric(perOp, "heap-B/op-indexed")
	b.ReportMetric(estimate, "MemSize-B/op-indexed")
}
