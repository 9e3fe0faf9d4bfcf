package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/ferrysync/ferry/replica"
)

const w6Title = "local reads: insert, open, scan, index, live query, Get"

// Item is W6's record: {name, price, qty, cat}, with 100 categories.
type Item struct {
	Name  string  `ferry:"name"`
	Price float64 `ferry:"price"`
	Qty   int64   `ferry:"qty"`
	Cat   string  `ferry:"cat"`
}

func randomItem(rng *rand.Rand, i int) Item {
	return Item{Name: fmt.Sprintf("item %d", i), Price: float64(rng.IntN(10_000)) / 100,
		Qty: int64(rng.IntN(1000)), Cat: fmt.Sprintf("c%d", rng.IntN(100))}
}

// w6Cheap is W6's filter: category c7 under 5.00, about 0.05% of the
// records.
func w6Cheap(it *Item) bool { return it.Cat == "c7" && it.Price < 5 }

// W6 is local reads on one device: a local-only replica (default
// options, Relaxed) inserts ten times Records items in units of work of
// 500, with its peak memory; then it is closed and opened again (open),
// and reads: a full scan decoding every record and keeping w6Cheap's
// (scan), an index on (cat, price) built (index_build) and queried for the
// same rows (indexed_query), a live query on it timed from a write to its
// row (live_latency, p50 of 100), and Gets of random records, right
// after a reopen (get_cold) and again (get_warm). Times of reads are also
// given in CPU seconds of the process (_cpu), which a loaded machine
// inflates less than the wall clock.
//
// The device runs in a process of its own, as an app embedding Ferry
// does: this executable started again (see [DeviceMain]), holding only
// the replica, so that its memory figures are the device's and not those
// of the bench's relay code, earlier workloads or results. The figures
// and times are measured in that process and sent back on its standard
// output.
func W6(ctx context.Context, cfg Config) (res *Result, err error) {
	cfg, res, cleanup, err := prepare(ctx, cfg, "W6")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	res.Title = w6Title
	start := time.Now()
	spec := deviceSpec{Records: 10 * cfg.Records, Seed: cfg.Seed, Dir: filepath.Join(cfg.Dir, "W6")}
	out, err := runDevice(ctx, spec, cfg.Progress)
	if err != nil {
		return nil, err
	}
	res.DevicePID = out.PID
	res.Metrics = append(res.Metrics, out.Metrics...)
	res.Notes = append(res.Notes, out.Notes...)
	if cfg.Verify {
		if err := w6VerifyStore(spec); err != nil {
			return nil, err
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// w6VerifyStore opens the store the device process left, in this
// process, and checks that it holds every record it inserted, each
// decoding: what it wrote reached the disk, where W6 said. (The filter's
// count is not checked: the live query's writes moved records out of it.)
func w6VerifyStore(spec deviceSpec) error {
	r, err := replica.Open(spec.Dir, w6Options())
	if err != nil {
		return fmt.Errorf("bench: W6 verify: %w", err)
	}
	defer r.Close()
	all := 0
	for _, err := range replica.Select(r.Collection("items"), replica.Query[Item]{}) {
		if err != nil {
			return fmt.Errorf("bench: W6 verify: %w", err)
		}
		all++
	}
	if all != spec.Records {
		return checkf("W6's store, reopened by the bench, holds %d records; the device inserted %d", all, spec.Records)
	}
	return nil
}

func w6Options() *replica.Options {
	return &replica.Options{LocalOnly: true, Relaxed: true, GCInterval: -1}
}

// w6Device is W6's device: everything it measures, run in the device
// process (serveDevice). It returns the metrics and notes.
func w6Device(ctx context.Context, spec deviceSpec, progress func(string)) (out *deviceResult, err error) {
	res := &Result{}
	n := spec.Records
	dir := spec.Dir
	opts := w6Options()
	r, err := replica.Open(dir, opts)
	if err != nil {
		return nil, err
	}
	defer func() {
		if r != nil {
			r.Close()
		}
	}()
	mem := newSelfProbe()
	defer mem.close()
	maps := newMapsProbe(dir)
	defer maps.close()
	rng := rand.New(rand.NewPCG(spec.Seed, 6))
	want := 0
	var ids []string
	t0, c0 := time.Now(), cpuTime()
	for i := 0; i < n; i += 500 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		err := r.Write(func(tx *replica.Tx) error {
			for j := i; j < min(i+500, n); j++ {
				it := randomItem(rng, j)
				if w6Cheap(&it) {
					want++
				}
				id, err := tx.Insert("items", it)
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if i%20_000 == 0 {
			progress(fmt.Sprintf("W6: %d of %d inserted", i, n))
		}
	}
	res.add(Metric{Name: "records", Value: float64(n), Unit: "count"})
	w6Time(res, "insert", time.Since(t0), cpuTime()-c0, n, "records/s")
	st := mem.peak()
	res.add(Metric{Name: "insert_peak_rss", Value: float64(st.PeakRSS), Unit: "B", Note: "the device's own process, which holds only the replica (VmHWM), while inserting"})
	res.add(Metric{Name: "insert_peak_rss_anon", Value: float64(st.PeakAnon), Unit: "B", Note: "anonymous resident memory at its highest, sampled every 10 ms: Go's heap, Automerge's, stacks"})
	res.add(Metric{Name: "insert_peak_rss_file", Value: float64(st.PeakFile), Unit: "B", Note: "file-backed resident memory at its highest, sampled: the binary, and Badger's mapped tables and logs"})
	res.add(Metric{Name: "insert_peak_heap", Value: float64(st.PeakHeap), Unit: "B", Note: "Go heap objects, sampled every 10 ms; Automerge's Rust allocations are not Go heap"})
	maps.flush("insert")
	heapProfile("insert")
	after, _ := procStatus("self")
	res.add(Metric{Name: "after_insert_rss", Value: float64(after.VmRSS), Unit: "B", Note: "the device process right after the insert, the replica open"})
	res.add(Metric{Name: "after_insert_rss_anon", Value: float64(after.RssAnon), Unit: "B"})
	res.add(Metric{Name: "after_insert_rss_file", Value: float64(after.RssFile), Unit: "B"})

	if err := r.Close(); err != nil {
		return nil, err
	}
	t0 = time.Now()
	if r, err = replica.Open(dir, opts); err != nil {
		return nil, err
	}
	w6Time(res, "open", time.Since(t0), 0, 0, "")
	items := r.Collection("items")

	got := 0
	maps.flush("close and open")
	mem.reset()
	d, cpu, err := timed(func() error {
		for _, err := range replica.Select(items, replica.Query[Item]{Where: w6Cheap}) {
			if err != nil {
				return err
			}
			got++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if got != want {
		return nil, checkf("W6 scan kept %d records, want %d", got, want)
	}
	w6Time(res, "scan", d, cpu, n, "records/s")
	w6Peak(res, mem, maps, "scan")

	mem.reset()
	d, cpu, err = timed(func() error {
		return items.EnsureIndex("by_cat_price", replica.IndexOptions{Fields: []string{"cat", "price"}})
	})
	if err != nil {
		return nil, err
	}
	w6Time(res, "index_build", d, cpu, n, "records/s")
	w6Peak(res, mem, maps, "index_build")
	cheap := replica.Query[Item]{Index: "by_cat_price", Eq: []any{"c7"}, To: 5.0}
	got = 0
	d, cpu, err = timed(func() error {
		for _, err := range replica.Select(items, cheap) {
			if err != nil {
				return err
			}
			got++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if got != want {
		return nil, checkf("W6 indexed query found %d records, want %d", got, want)
	}
	w6Time(res, "indexed_query", d, cpu, 0, "")

	// Live query: each write moves a record into the query; the latency
	// runs until the live query delivers it.
	maps.flush("indexed query")
	mem.reset()
	live, err := replica.WatchQuery(items, cheap, 0)
	if err != nil {
		return nil, err
	}
	for range want {
		<-live.C // the rows it starts with
	}
	var lat []time.Duration
	for i := range 100 {
		id := ids[rng.IntN(len(ids))]
		t0 := time.Now()
		if err := items.Put(id, map[string]any{"cat": "c7", "price": float64(i%400) / 100}); err != nil {
			live.Close()
			return nil, err
		}
		for ch := range live.C {
			if ch.Row.ID == id {
				break
			}
		}
		lat = append(lat, time.Since(t0))
		// Out again, and its Left row read.
		if err := items.Put(id, map[string]any{"cat": "c8"}); err != nil {
			live.Close()
			return nil, err
		}
		for ch := range live.C {
			if ch.Row.ID == id {
				break
			}
		}
	}
	live.Close()
	s := sortedDurations(lat)
	res.add(Metric{Name: "live_latency_p50", Value: percentile(s, 50).Seconds(), Unit: "s"})
	res.add(Metric{Name: "live_latency_p99", Value: percentile(s, 99).Seconds(), Unit: "s"})
	w6Peak(res, mem, maps, "live")
	mem.reset()

	// Gets, cold (right after a reopen: nothing cached, by Ferry or
	// Badger) then warm.
	if err := r.Close(); err != nil {
		return nil, err
	}
	if r, err = replica.Open(dir, opts); err != nil {
		return nil, err
	}
	w6Peak(res, mem, maps, "reopen")
	mem.reset()
	items = r.Collection("items")
	pick := make([]string, 1000)
	for i := range pick {
		pick[i] = ids[rng.IntN(len(ids))]
	}
	for _, phase := range []string{"get_cold", "get_warm"} {
		d, cpu, err := timed(func() error {
			for _, id := range pick {
				var it Item
				if err := items.Get(id, &it); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		res.add(Metric{Name: phase, Value: d.Seconds() / float64(len(pick)), Unit: "s", Note: "per Get"})
		res.add(Metric{Name: phase + "_cpu", Value: cpu.Seconds() / float64(len(pick)), Unit: "s", Note: "per Get, CPU of the process"})
	}
	w6Peak(res, mem, maps, w6LastPhase)
	end, _ := procStatus("self")
	res.add(Metric{Name: "rss_end", Value: float64(end.VmRSS), Unit: "B", Note: "the device process at the end, the replica open"})
	res.Notes = append(res.Notes,
		fmt.Sprintf("%d records {name, price, qty, cat}, 100 categories; the filter keeps %d (cat c7, price under 5)", n, want),
		"insert: local-only replica, default options but Relaxed, units of work of 500",
		"scan: replica.Select with a Go predicate over every record; indexed_query: the index (cat, price), Eq c7, To 5",
		"the device runs in a process of its own (this executable again), holding only the replica; its memory and times are measured there",
		"no ratio: reads are not measured against W0's floor")
	return &deviceResult{Metrics: res.Metrics, Notes: res.Notes}, nil
}

// w6LastPhase is the last phase whose peak W6's device reports: the bench
// checks it against the VmHWM it reads from the device process.
const w6LastPhase = "get"

// w6Peak adds the device's peak memory in the phase just measured, since
// mem's last reset: RSS (VmHWM), and the sampled peaks of its anonymous
// and file-backed parts and of the Go heap. With FERRY_BENCH_HEAPPROFILE
// set to a directory, it also writes the Go heap's profile there as
// <phase>.pprof (allocations since the start included: go tool pprof
// -sample_index=alloc_space). With FERRY_BENCH_SMAPS set to a file, the
// phase's RSS at its highest and its mappings by kind are appended to it
// (see mapsProbe).
func w6Peak(res *Result, mem *selfProbe, maps *mapsProbe, phase string) {
	st := mem.peak()
	res.add(Metric{Name: phase + "_peak_rss", Value: float64(st.PeakRSS), Unit: "B", Note: "the device process's peak RSS in this phase (VmHWM, reset when it began)"})
	res.add(Metric{Name: phase + "_peak_rss_anon", Value: float64(st.PeakAnon), Unit: "B"})
	res.add(Metric{Name: phase + "_peak_rss_file", Value: float64(st.PeakFile), Unit: "B"})
	res.add(Metric{Name: phase + "_peak_heap", Value: float64(st.PeakHeap), Unit: "B"})
	maps.flush(phase)
	heapProfile(phase)
}

// heapProfile writes the Go heap's profile as <phase>.pprof in the
// directory FERRY_BENCH_HEAPPROFILE names, if set.
func heapProfile(phase string) {
	if dir := os.Getenv("FERRY_BENCH_HEAPPROFILE"); dir != "" {
		if f, err := os.Create(filepath.Join(dir, phase+".pprof")); err == nil {
			pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}
}

// timed runs fn and returns its wall time and the process's CPU time.
func timed(fn func() error) (wall, cpu time.Duration, err error) {
	c0 := cpuTime()
	t0 := time.Now()
	err = fn()
	return time.Since(t0), cpuTime() - c0, err
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// w6Time adds a time (and its CPU time, if measured) over n records.
func w6Time(res *Result, name string, d, cpu time.Duration, n int, unit string) {
	res.add(Metric{Name: name, Value: d.Seconds(), Unit: "s"})
	if cpu > 0 {
		res.add(Metric{Name: name + "_cpu", Value: cpu.Seconds(), Unit: "s", Note: "CPU of the process"})
	}
	if n > 0 && d > 0 && unit != "" {
		res.add(Metric{Name: name + "_rate", Value: float64(n) / d.Seconds(), Unit: unit})
	}
}
