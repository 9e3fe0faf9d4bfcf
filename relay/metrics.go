package relay

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

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
	authFailures  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_relay_connections", Help: "Open device connections."}),
		subscribers: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_relay_subscribers", Help: "Live subscriptions."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_relay_requests_total",
			Help: "Requests by message type (push, pull, ...) and result (ok or an error code)."}, []string{"type", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ferry_relay_request_seconds",
			Help: "Time to answer a request, by message type.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"type"}),
		changes:       prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_changes_accepted_total", Help: "Automerge changes stored (duplicates excluded)."}),
		bytesIn:       prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_change_bytes_in_total", Help: "Change bytes received in pushes."}),
		bytesOut:      prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_change_bytes_out_total", Help: "Change and snapshot bytes sent in pulls and live messages."}),
		leaseWaits:    prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_lease_waits_total", Help: "Lease acquisitions that had to wait for another holder."}),
		leaseWait:     prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_relay_lease_wait_seconds", Help: "Time waited for a held lease, when granted.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_slow_consumers_total", Help: "Subscribers disconnected for falling behind."}),
		authFailures:  prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_auth_failures_total", Help: "Refused API keys and tokens."}),
	}
	logSize := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_relay_log_entries", Help: "Entries in all change logs."}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := s.store.Stats(ctx)
		if err != nil {
			return -1
		}
		return float64(st.LogEntries)
	})
	storeBytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_relay_store_bytes", Help: "Approximate size of the store."}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := s.store.Stats(ctx)
		if err != nil {
			return -1
		}
		return float64(st.Bytes)
	})
	for _, c := range []prometheus.Collector{m.connections, m.subscribers, m.requests, m.latency, m.changes, m.bytesIn, m.bytesOut, m.leaseWaits, m.leaseWait, m.slowConsumers, m.authFailures, logSize, storeBytes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
