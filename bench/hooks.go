package bench

import (
	"time"

	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/replica"
	"github.com/ferrysync/ferry/transport"
)

// testHooks let this package's tests see how the workloads open their
// stores and where their timers start and stop, and make a relay's
// answers wrong. All nil outside tests, which set them before a run and
// clear them after; they are called from the goroutines running a
// workload, and may block it.
var testHooks hooks

type hooks struct {
	// openedReplica sees each replica a workload opens, by name, with the
	// options it was opened with.
	openedReplica func(name string, r *replica.Replica, o *replica.Options)
	// openedRelay sees the options of each in-process relay's store.
	openedRelay func(o *badgerstore.Options)
	// edge is called as a timed span of a workload starts or stops, just
	// before the clock is read.
	edge func(span string, start bool)
	// ack may change each acknowledgement W4's pushers receive.
	ack func(*transport.Ack)
	// scraped may change each reading of the relay's /metrics.
	scraped func(map[string]float64)
}

// edge reads the clock at the start or the stop of a timed span.
func edge(span string, start bool) time.Time {
	if h := testHooks.edge; h != nil {
		h(span, start)
	}
	return time.Now()
}
