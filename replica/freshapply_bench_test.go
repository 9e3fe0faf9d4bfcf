package replica

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// BenchmarkFreshApply is the device's side of W1's fresh pull without the
// relay or the wire: 10,000 product records applied in batches of 1,000
// as a pull applies a page (mergeOp, with merges prepared on the other
// cores), into a replica on disk. Each record arrives as a fresh pull
// sends it: as the changes that made it (saved=false, a record the relay
// has not compacted, as W1's are), or as its saved document (saved=true,
// a compacted one). Per 1,000 records it reports the wall time, the
// process's CPU, and the CPU of the goroutine that runs the batch (locked
// to its thread; Automerge's calls run on the caller's thread), which the
// merges on other cores do not shorten: with cores to spare, the wall
// time's floor.
func BenchmarkFreshApply(b *testing.B) {
	const n, page = 10000, 1000
	rng := rand.New(rand.NewPCG(1, 2))
	tags := []string{"tea", "green", "black", "loose", "bag", "iced", "oolong", "white", "chai", "mint"}
	recs, saved := make([]remoteRec, n), make([]remoteRec, n)
	for i := range recs {
		d, err := crdt.New("aaaaaaaaaaaaaaaa")
		if err != nil {
			b.Fatal(err)
		}
		err = d.Put(map[string]any{
			"name": fmt.Sprintf("product-%08d", rng.IntN(1e8)), "price": float64(rng.IntN(100000)) / 100, "qty": int64(rng.IntN(1000)),
			"tags": []any{tags[rng.IntN(10)], tags[rng.IntN(10)], tags[rng.IntN(10)]}, "updated": int64(1_700_000_000_000 + i),
		})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := d.Commit("", time.Time{}); err != nil {
			b.Fatal(err)
		}
		changes, err := d.ChangesSince(nil)
		if err != nil {
			b.Fatal(err)
		}
		recs[i] = remoteRec{id: fmt.Sprintf("rec-%06d", i), data: changes, relay: d.Heads()}
		saved[i] = remoteRec{id: recs[i].id, data: d.Save(), relay: d.Heads()}
		d.Free()
	}
	b.Run("saved=false", func(b *testing.B) { benchFreshApply(b, recs, n, page) })
	b.Run("saved=true", func(b *testing.B) { benchFreshApply(b, saved, n, page) })
}

func benchFreshApply(b *testing.B, recs []remoteRec, n, page int) {
	var walls, cpus, mains []time.Duration
	for b.Loop() {
		b.StopTimer()
		r, err := Open(b.TempDir(), nil)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		b.StartTimer()
		runtime.LockOSThread()
		t0, p0, m0 := time.Now(), processCPU(), threadCPU()
		for lo := 0; lo < n; lo += page {
			res, err := r.applyHolding("c", recs[lo:lo+page], r.mergeOp, true, nil)
			freeMerged(res.conflicted)
			if err != nil {
				b.Fatal(err)
			}
			if len(res.events) != page {
				b.Fatalf("%d records applied, want %d", len(res.events), page)
			}
		}
		m1, p1, t1 := threadCPU(), processCPU(), time.Now()
		runtime.UnlockOSThread()
		walls, cpus, mains = append(walls, t1.Sub(t0)), append(cpus, p1-p0), append(mains, m1-m0)
		b.StopTimer()
		if err := r.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	med := func(s []time.Duration) float64 {
		slices.Sort(s)
		return float64(s[len(s)/2].Microseconds()) / 1000 / float64(n/page)
	}
	b.ReportMetric(med(walls), "wall-ms/1k")
	b.ReportMetric(med(cpus), "cpu-ms/1k")
	b.ReportMetric(med(mains), "batch-goroutine-cpu-ms/1k")
}
