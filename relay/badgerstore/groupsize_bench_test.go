//go:build unix

package badgerstore_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// BenchmarkBadgerGroupSize appends groups of new records' entries of
// W4's size (190 bytes of changes each), fsynced, as the relay's group
// commits do, and reports the process's CPU per entry and per group: an
// append and its fsync cost much the same CPU whatever the entries in
// it, so larger groups cost less per entry.
//
//	go test -run='^$' -bench=BenchmarkBadgerGroupSize -benchtime=4000x ./relay/badgerstore/
func BenchmarkBadgerGroupSize(b *testing.B) {
	for _, k := range []int{1, 8, 16, 32} {
		b.Run(fmt.Sprintf("entries=%d", k), func(b *testing.B) {
			st := openBenchBadger(b, b.TempDir(), nil)
			b.Cleanup(func() { st.Close() })
			c := relay.Coll{Tenant: "bench", Collection: "w4"}
			changes := make([]byte, 190)
			groups := make([][]relay.Entry, (b.N+k-1)/k)
			for g := range groups {
				for i := g * k; i < min(b.N, (g+1)*k); i++ {
					var h crdt.Hash
					binary.BigEndian.PutUint64(h[:], uint64(i+1))
					groups[g] = append(groups[g], relay.Entry{Record: fmt.Sprintf("r%09d", i), Changes: changes, Hashes: []crdt.Hash{h}, Heads: crdt.Heads{h}})
				}
			}
			now := time.Now()
			cpu0 := processCPU()
			b.ResetTimer()
			for _, es := range groups {
				if _, err := st.Append(context.Background(), c, 0, now, es); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			cpu := processCPU() - cpu0
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/entry")
			b.ReportMetric(float64(cpu.Microseconds())/float64(len(groups)), "cpu-µs/group")
		})
	}
}

// processCPU is the process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
