package relay_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
)

// BenchmarkPushNewRecords is W4's push path in the relay alone: 16
// clients push creation changes of 5 fields, one new record per push,
// each awaiting its ack, through the Backend to a memory store (no
// socket, no fsync), so what it measures is the relay's own work per
// push: admission, framing, the check in Go, the group commit and its
// bookkeeping. The changes repeat across records (each record is a
// document of its own). With 16 pushers on a few cores, ns/op is wall
// time over all of them; cpu-ns/op is the process's CPU per push (user
// and system, the collector's included), the figure to compare.
func BenchmarkPushNewRecords(b *testing.B) {
	const clients = 16
	changes := make([][]byte, 256)
	for i := range changes {
		ed := storetest.NewEditor(b, fmt.Sprintf("%032x", i+1))
		changes[i] = ed.Edit(map[string]any{"name": fmt.Sprint("item ", i), "price": 1.5 * float64(i), "qty": int64(i), "cat": "c", "sku": fmt.Sprint("s", i)})
		ed.Doc.Free()
	}
	srv, _ := benchRelay(b, memstore.New(), false, nil)
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	ctx := context.Background()
	var next atomic.Int64
	b.ReportAllocs()
	cpu0 := processCPU(b)
	b.ResetTimer()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				p := pushOf("c", 0, rec(fmt.Sprintf("r%09d", i), changes[i%int64(len(changes))]))
				if _, err := srv.Backend().Push(ctx, coll, p); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// processCPU is the CPU time the process has used, user and system.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
