package amrepo

import "github.com/prometheus/client_golang/prometheus"

// amMetrics are the automerge-repo endpoint's own; the changes it stores
// also count in the relay's (ferry_relay_changes_accepted_total, ...),
// since they go through the same push path.
type amMetrics struct {
	connections prometheus.Gauge
	openDocs    prometheus.Gauge
	messages    *prometheus.CounterVec
	refused     *prometheus.CounterVec
	bytesIn     prometheus.Counter
	bytesOut    prometheus.Counter
	syncSeconds prometheus.Histogram
	// queuedBytes is what queued messages count for (see amqueue.go), all
	// connections; backpressure counts the times a read loop waited for
	// room.
	queuedBytes  prometheus.Gauge
	backpressure prometheus.Counter
	// busyRetries counts the waits of handlers before retrying work the
	// relay refused with busy (see ambusy.go); refused{reason="busy"} the
	// connections closed when it stayed busy.
	busyRetries prometheus.Counter
}

func newAMMetrics(reg prometheus.Registerer) (*amMetrics, error) {
	m := &amMetrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_relay_automerge_connections", Help: "Open automerge-repo connections."}),
		openDocs:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_relay_automerge_documents", Help: "Documents synced by open automerge-repo connections."}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_relay_automerge_messages_total",
			Help: "automerge-repo messages by type and direction (in, out)."}, []string{"type", "dir"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_relay_automerge_refused_total",
			Help: "automerge-repo connections, messages and changes refused, by reason."}, []string{"reason"}),
		bytesIn:  prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_automerge_received_bytes_total", Help: "automerge-repo message bytes received."}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_automerge_sent_bytes_total", Help: "automerge-repo message bytes sent."}),
		syncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_relay_automerge_sync_seconds",
			Help: "Time to take in an automerge-repo sync message and answer it, storing its changes included.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}),
		queuedBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_relay_automerge_queued_bytes",
			Help: "What automerge-repo sync messages read and not yet answered count for: their bytes, plus max_inflated for each carrying changes."}),
		backpressure: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_automerge_backpressure_total",
			Help: "Times an automerge-repo connection was not read until its queued messages were answered (past max queued bytes)."}),
		busyRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_relay_automerge_busy_retries_total",
			Help: "Times an automerge-repo connection's handler waited to retry a push or document load the relay refused with busy (max_memory in use)."}),
	}
	// Every label value exists from the start, so dashboards and alerts
	// see zeros rather than nothing.
	for _, t := range []string{amJoin, amPeer, amError, amRequest, amSync, amUnavailable, amEphemeral, amSubscription, amHeadsChanged, "other", "malformed"} {
		for _, dir := range []string{"in", "out"} {
			m.messages.WithLabelValues(t, dir)
		}
	}
	for _, r := range []string{"auth", "collection", "forbidden", "quota", "read_only", "max_docs", "too_large", "busy"} {
		m.refused.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.connections, m.openDocs, m.messages, m.refused, m.bytesIn, m.bytesOut, m.syncSeconds, m.queuedBytes, m.backpressure, m.busyRetries} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
