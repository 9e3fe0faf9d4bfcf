package relay

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrysync/ferry/transport"
)

// requestTypes are the messages a device sends and the relay answers: the
// values of the type label, each present (at zero) from the start, so a
// dashboard sees every series before the first request of its type.
var requestTypes = []transport.MessageType{
	transport.TypeHello, transport.TypeAuth, transport.TypePush, transport.TypePull,
	transport.TypeSubscribe, transport.TypeUnsubscribe,
	transport.TypeLeaseAcquire, transport.TypeLeaseRenew, transport.TypeLeaseRelease,
	transport.TypePresence,
}

// metrics are the relay's Prometheus metrics. Names follow Prometheus'
// conventions: the unit, then _total for counters, last.
type metrics struct {
	connections   prometheus.Gauge
	subscribers   prometheus.Gauge
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	changes       prometheus.Counter
	bytesIn       prometheus.Counter
	bytesOut      prometheus.Counter
	leaseWaits    prometheus.Counter
	leaseWait     prometheus.Histogram
	slowConsumers prometheus.Counter
	compactions   prometheus.Counter
	authFailures  prometheus.Counter
	quotaRefusals *prometheus.CounterVec
	memRefusals   prometheus.Counter
	recordSaves   prometheus.Counter
	groups        prometheus.Counter
	// pushOK and pushLatency are requests' and latency's series for a
	// push answered ok, looked up once: one is counted for every push.
	pushOK      prometheus.Counter
	pushLatency prometheus.Observer
}

func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_relay_connections", Help: "Open device connections."}),
		subscribers: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_relay_subscribers", Help: "Live subscriptions."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_relay_requests_total",
			Help: "Requests by message type (hello, push, pull, ...) and result (ok or an error code)."}, []string{"type", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ferry_relay_request_seconds",
			Help: "Time to answer a request, by message type.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"type"}),
		changes:       prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_changes_accepted_total", Help: "Automerge changes stored (duplicates excluded)."}),
		bytesIn:       prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_change_received_bytes_total", Help: "Change bytes received in pushes."}),
		bytesOut:      prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_change_sent_bytes_total", Help: "Change and snapshot bytes sent in pulls and live messages."}),
		leaseWaits:    prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_lease_waits_total", Help: "Lease acquisitions that had to wait for another holder."}),
		leaseWait:     prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_relay_lease_wait_seconds", Help: "Time waited for a held lease, when granted.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}),
		compactions:   prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_compactions_total", Help: "Records whose tail was folded into a new snapshot."}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_slow_consumers_total", Help: "Subscribers disconnected for falling behind."}),
		authFailures:  prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_auth_failures_total", Help: "Refused API keys and tokens."}),
		quotaRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_relay_quota_refusals_total",
			Help: "Connections and pushes refused for passing their app's quota, by app and quota (connections, push_rate, stored_bytes)."}, []string{"app", "quota"}),
		memRefusals: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_memory_refusals_total",
			Help: "Work refused with busy after waiting for room in the memory budget (max_memory)."}),
		recordSaves: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_record_saves_total",
			Help: "Records saved whole on push, to check their size against max_record."}),
		groups: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_group_commits_total",
			Help: "Store appends of pushes' changes, each holding one or more pushes (group commit)."}),
	}
	for _, t := range requestTypes {
		m.requests.WithLabelValues(string(t), "ok")
		m.latency.WithLabelValues(string(t))
	}
	m.pushOK = m.requests.WithLabelValues(string(transport.TypePush), "ok")
	m.pushLatency = m.latency.WithLabelValues(string(transport.TypePush))
	s.quotas.count(m.quotaRefusals)
	stats := func(read func(StoreStats) int64) func() float64 {
		return func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			st, err := s.store.Stats(ctx)
			if err != nil {
				return -1
			}
			return float64(read(st))
		}
	}
	logSize := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_relay_log_entries", Help: "Entries in all change logs."},
		stats(func(st StoreStats) int64 { return st.LogEntries }))
	storeBytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_relay_store_bytes", Help: "Bytes the store takes on disk (in memory, for a memory store)."},
		stats(func(st StoreStats) int64 { return st.Bytes }))
	compactFailing := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_relay_compaction_failing_records", Help: "Records whose compaction failed, or that a fresh pull left out, and that have not compacted since."},
		func() float64 { return float64(s.compactor.failingCount()) })
	memUsed := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_relay_memory_bytes",
		Help: "Memory the relay counts against its budget now: loaded documents, pushes in progress, pages and live messages being sent."},
		func() float64 { return float64(s.mem.inUse()) })
	memBudget := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_relay_memory_budget_bytes", Help: "The relay's memory budget (max_memory)."},
		func() float64 { return float64(s.mem.max) })
	for _, c := range []prometheus.Collector{m.connections, m.subscribers, m.requests, m.latency, m.changes, m.bytesIn, m.bytesOut, m.leaseWaits, m.leaseWait, m.slowConsumers, m.compactions, m.authFailures, m.quotaRefusals, m.memRefusals, m.recordSaves, m.groups, logSize, storeBytes, compactFailing, memUsed, memBudget} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// request records one answered request of type typ, hello included: code
// is the error it was answered with, "" for success, and elapsed runs from
// the request's arrival to its answer.
func (m *metrics) request(typ transport.MessageType, code transport.Code, elapsed time.Duration) {
	if typ == transport.TypePush && code == "" {
		m.pushOK.Inc()
		m.pushLatency.Observe(elapsed.Seconds())
		return
	}
	result := "ok"
	if code != "" {
		result = string(code)
	}
	m.requests.WithLabelValues(string(typ), result).Inc()
	m.latency.WithLabelValues(string(typ)).Observe(elapsed.Seconds())
}
