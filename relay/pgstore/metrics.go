package pgstore

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the store's own counters; the pool's figures are read from
// pgxpool when scraped.
type metrics struct {
	retries        *prometheus.CounterVec
	giveUps        *prometheus.CounterVec
	notifySent     prometheus.Counter
	notifyFailed   prometheus.Counter
	notifyReceived prometheus.Counter
	listenLost     prometheus.Counter
	appended       prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_postgres_retries_total",
			Help: "Store calls attempted again, by call (append, log, ...) and reason (connection, server, serialization, ...)."}, []string{"op", "reason"}),
		giveUps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_postgres_failures_total",
			Help: "Store calls that failed after their retries, by call."}, []string{"op"}),
		notifySent:     prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_postgres_notifications_sent_total", Help: "NOTIFYs telling other relays of appends and lease releases."}),
		notifyFailed:   prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_postgres_notifications_failed_total", Help: "NOTIFYs that failed (other relays find the change at their next sweep)."}),
		notifyReceived: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_postgres_notifications_received_total", Help: "Notifications received, this relay's own included."}),
		listenLost:     prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_postgres_listen_reconnects_total", Help: "Times the LISTEN connection was lost and made again."}),
		appended:       prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_postgres_appended_entries_total", Help: "Log entries this relay appended."}),
	}
}

var (
	descConns = prometheus.NewDesc("ferry_postgres_pool_connections",
		"Connections of the pool, by state: acquired (in use), idle, constructing.", []string{"state"}, nil)
	descMaxConns = prometheus.NewDesc("ferry_postgres_pool_max_connections", "The pool's bound (Options.MaxConns).", nil, nil)
	descAcquires = prometheus.NewDesc("ferry_postgres_pool_acquires_total", "Connections taken from the pool.", nil, nil)
	descWaits    = prometheus.NewDesc("ferry_postgres_pool_waited_acquires_total",
		"Acquires that found no idle connection and waited for one (or for a new one): a pool too small shows here.", nil, nil)
	descWaitSecs = prometheus.NewDesc("ferry_postgres_pool_acquire_wait_seconds_total", "Time spent waiting in those acquires.", nil, nil)
	descNewConns = prometheus.NewDesc("ferry_postgres_pool_new_connections_total", "Connections opened.", nil, nil)
	descOffset   = prometheus.NewDesc("ferry_postgres_clock_offset_seconds",
		"The database's clock, which times leases, minus this machine's.", nil, nil)
)

// Collector returns the store's Prometheus metrics: its connection pool,
// its retries, its notifications and the database's clock offset. Register
// it beside the relay's (cmd/ferry does).
func (s *Store) Collector() prometheus.Collector { return collector{s} }

type collector struct{ s *Store }

func (c collector) counters() []prometheus.Collector {
	m := c.s.metrics
	return []prometheus.Collector{m.retries, m.giveUps, m.notifySent, m.notifyFailed, m.notifyReceived, m.listenLost, m.appended}
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, x := range c.counters() {
		x.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{descConns, descMaxConns, descAcquires, descWaits, descWaitSecs, descNewConns, descOffset} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, x := range c.counters() {
		x.Collect(ch)
	}
	st := c.s.pool.Stat()
	ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(st.AcquiredConns()), "acquired")
	ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(st.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(st.ConstructingConns()), "constructing")
	ch <- prometheus.MustNewConstMetric(descMaxConns, prometheus.GaugeValue, float64(st.MaxConns()))
	ch <- prometheus.MustNewConstMetric(descAcquires, prometheus.CounterValue, float64(st.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(descWaits, prometheus.CounterValue, float64(st.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(descWaitSecs, prometheus.CounterValue, st.EmptyAcquireWaitTime().Seconds())
	ch <- prometheus.MustNewConstMetric(descNewConns, prometheus.CounterValue, float64(st.NewConnsCount()))
	ch <- prometheus.MustNewConstMetric(descOffset, prometheus.GaugeValue, c.s.clock.offset().Seconds())
}

// clockInterval is how often the store reads the database's clock again.
// A variable so that tests can see a reading take effect.
var clockInterval = 10 * time.Second

// clockRead, if set (by tests), is called after each reading of the
// database's clock the janitor takes.
var clockRead func()

// janitor keeps the clock in step with the database's and prunes old
// append ids, until Close.
func (s *Store) janitor() {
	defer s.bg.Done()
	clockT := time.NewTicker(clockInterval)
	defer clockT.Stop()
	pruneT := time.NewTicker(time.Minute)
	defer pruneT.Stop()
	for {
		select {
		case <-s.base.Done():
			return
		case <-clockT.C:
			ctx, cancel := context.WithTimeout(s.base, 5*time.Second)
			if err := s.clock.sync(ctx, s.pool); err != nil && s.base.Err() == nil {
				s.opts.Logger.Debug("reading the database's clock failed; keeping the last reading", "err", err)
			}
			cancel()
			if clockRead != nil {
				clockRead()
			}
		case <-pruneT.C:
			ctx, cancel := context.WithTimeout(s.base, 30*time.Second)
			if err := s.pruneAppendIDs(ctx); err != nil && s.base.Err() == nil {
				s.opts.Logger.Debug("pruning old append ids failed", "err", err)
			}
			cancel()
		}
	}
}
