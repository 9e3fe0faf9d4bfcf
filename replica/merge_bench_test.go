package replica

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// BenchmarkMergeRecord is one record of W3's merge on the device that
// merges (B): the record was created on A and pulled by B, then each side
// made ten offline single-field edits, and B takes A's. It times, per
// record, what a pull does with it, without the store, the relay or the
// scheduler of a whole sync:
//
//   - import: crdt's Import, with its checks of untrusted bytes;
//   - merge: merge, as a pull runs it with a built-in policy (in place):
//     the import, the merge base and the three-way comparison.
//
// Run it with
//
//	go test -run='^$' -bench=MergeRecord ./replica/
func BenchmarkMergeRecord(b *testing.B) {
	const edits = 10
	fields := []string{"name", "price", "qty", "updated"}
	value := func(rng *rand.Rand, f string) any {
		if f == "name" {
			return fmt.Sprintf("name-%d", rng.IntN(1000))
		}
		return rng.Int64N(1000)
	}
	a, err := crdt.New("aaaaaaaa")
	if err != nil {
		b.Fatal(err)
	}
	if err := a.Put(map[string]any{"name": "product", "price": 1.5, "qty": int64(1), "updated": int64(0)}); err != nil {
		b.Fatal(err)
	}
	if _, err := a.Commit("", time.Time{}); err != nil {
		b.Fatal(err)
	}
	creation, err := a.ChangesSince(nil)
	if err != nil {
		b.Fatal(err)
	}
	created := a.Heads()
	rng := rand.New(rand.NewPCG(1, 2))
	for range edits {
		f := fields[rng.IntN(len(fields))]
		if err := a.Set(crdt.Path{f}, value(rng, f)); err != nil {
			b.Fatal(err)
		}
		if _, err := a.Commit("", time.Time{}); err != nil {
			b.Fatal(err)
		}
	}
	incoming, err := a.ChangesSince(created)
	if err != nil {
		b.Fatal(err)
	}
	relay := a.Heads()
	// device returns B's document: the creation imported, then B's edits,
	// each read back as a replica stores it (its changes since the heads
	// before).
	device := func(b *testing.B) *crdt.Doc {
		d, err := crdt.New("bbbbbbbb")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := d.Import(creation); err != nil {
			b.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(3, 4))
		for range edits {
			before := d.Heads()
			f := fields[rng.IntN(len(fields))]
			if err := d.Set(crdt.Path{f}, value(rng, f)); err != nil {
				b.Fatal(err)
			}
			if _, err := d.Commit("", time.Time{}); err != nil {
				b.Fatal(err)
			}
			if _, err := d.ChangesSince(before); err != nil {
				b.Fatal(err)
			}
		}
		return d
	}
	// Each iteration prepares its documents untimed; each variant reports
	// the CPU time of the merges alone, on the thread that runs them
	// (cpu-us/op: Automerge's calls run on the calling thread), so that
	// neither the preparation's garbage nor other processes count.
	run := func(b *testing.B, prepare func(b *testing.B) (step, done func(b *testing.B))) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var cpu time.Duration
		for b.Loop() {
			b.StopTimer()
			step, done := prepare(b)
			b.StartTimer()
			c0 := threadCPU()
			step(b)
			cpu += threadCPU() - c0
			b.StopTimer()
			done(b)
			b.StartTimer()
		}
		b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N), "cpu-us/op")
	}
	b.Run("import", func(b *testing.B) {
		run(b, func(b *testing.B) (step, done func(b *testing.B)) {
			d := device(b)
			return func(b *testing.B) {
				if n, err := d.Import(incoming); n != edits || err != nil {
					b.Fatal(n, err)
				}
			}, func(*testing.B) { d.Free() }
		})
	})
	b.Run("merge", func(b *testing.B) {
		run(b, func(b *testing.B) (step, done func(b *testing.B)) {
			d := device(b)
			return func(b *testing.B) {
				m := merge(d, true, incoming, relay, true)
				if m.err != nil || m.diff == nil || len(m.diff.Conflicts) == 0 {
					b.Fatal(m.err, m.diff)
				}
			}, func(*testing.B) { d.Free() }
		})
	})
}
