package storetest

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
)

// opMeter measures one operation per iteration of a benchmark whose
// iterations need setup far costlier than the operation (the appends that
// make a tail to compact, or a log to truncate). Stopping the timer for
// the setup would make b.Loop repeat it until the operation alone added
// up to the bench time: minutes, and gigabytes for a store in memory.
// Instead the loop's whole time paces b.Loop, and report replaces ns/op,
// MB/s, B/op and allocs/op with the operation's own figures.
type opMeter struct {
	n              int
	d              time.Duration
	allocs, bytes  uint64
	t0             time.Time
	allocs0, byte0 uint64
	ms             runtime.MemStats
}

func (m *opMeter) start() {
	runtime.ReadMemStats(&m.ms)
	m.allocs0, m.byte0 = m.ms.Mallocs, m.ms.TotalAlloc
	m.t0 = time.Now()
}

func (m *opMeter) stop() {
	m.d += time.Since(m.t0)
	runtime.ReadMemStats(&m.ms)
	m.allocs += m.ms.Mallocs - m.allocs0
	m.bytes += m.ms.TotalAlloc - m.byte0
	m.n++
}

// report sets the benchmark's figures to the operation's, each moving
// bytes.
func (m *opMeter) report(b *testing.B, bytes int64) {
	if m.n == 0 || m.d <= 0 {
		return
	}
	n := float64(m.n)
	b.ReportMetric(float64(m.d.Nanoseconds())/n, "ns/op")
	b.ReportMetric(float64(bytes)*n/1e6/m.d.Seconds(), "MB/s")
	b.ReportMetric(float64(m.bytes)/n, "B/op")
	b.ReportMetric(float64(m.allocs)/n, "allocs/op")
}

// benchCompact folds a tail of n entries per iteration (see opMeter): of
// a new record each time, or (history > 0) of one record that had history
// entries, appended one per call and folded in steps, before the timing
// began.
func benchCompact(b *testing.B, st relay.Store, n, history int) {
	rec := "compacted"
	var v uint64
	if history > 0 {
		v = compactEvery(b, st, rec, 0, history, benchSnap16K)
	}
	var m opMeter
	i := 0
	for b.Loop() {
		if history == 0 {
			rec, v = benchName(i), 0
			i++
		}
		v = grow(b, st, rec, v, n)
		r, err := st.Record(context.Background(), benchColl, rec)
		if err != nil || r.TailEntries != n {
			b.Fatalf("before Compact: %d tail entries, %v; want %d", r.TailEntries, err, n)
		}
		m.start()
		err = st.Compact(context.Background(), benchColl, rec, benchSnap16K, r.Seq)
		m.stop()
		if err != nil {
			b.Fatal(err)
		}
		// Keep a store in memory from holding every entry ever made.
		if _, err := st.Truncate(context.Background(), benchColl, r.Seq); err != nil {
			b.Fatal(err)
		}
	}
	m.report(b, int64(n)*benchChangeSize)
}

// benchTruncate drops n log entries of records compacted past them per
// iteration (see opMeter).
func benchTruncate(b *testing.B, st relay.Store, n, records int) {
	vs := make([]uint64, records)
	var m opMeter
	for b.Loop() {
		growAll(b, st, vs, n)
		for k := range records {
			r, err := st.Record(context.Background(), benchColl, benchName(k))
			if err != nil {
				b.Fatal(err)
			}
			if err := st.Compact(context.Background(), benchColl, benchName(k), benchSnap1K, r.Seq); err != nil {
				b.Fatal(err)
			}
		}
		head, err := st.Head(context.Background(), benchColl)
		if err != nil {
			b.Fatal(err)
		}
		m.start()
		horizon, err := st.Truncate(context.Background(), benchColl, head)
		m.stop()
		if err != nil || horizon != head {
			b.Fatalf("Truncate(%d) = %d, %v; want every entry dropped", head, horizon, err)
		}
	}
	m.report(b, int64(n)*benchChangeSize)
}
