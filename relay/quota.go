package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrysync/ferry/transport"
)

// Quota bounds what one app may use of a relay it shares with other apps.
// A zero field means no limit, so the zero Quota limits nothing. Quotas are
// set in Options.Quotas, by app ID. Each app's quota is enforced on its
// own: an app at its limits never makes another app's requests wait.
//
// Stored bytes are counted rather than read from the store on every push.
// The relay reads an app's usage (Store.Usage) when it first pushes, then
// at most every 5 s while it goes on pushing, and in between adds the
// change bytes of each push it stores. A push's bytes are reserved while
// it is in progress, so concurrent pushes through one relay cannot pass
// the quota together. What can still take an app past it, until the next
// read sees it: pushes accepted by other relay processes sharing the
// store, within those 5 s; and compaction, when a record's new snapshot is
// larger than the tail it replaces. The other way, changes the relay held
// already (a push sent again after a lost ack) count until the next read,
// so a push near the quota can be refused up to 5 s early.
type Quota struct {
	// MaxConnections is how many device connections the app may have open
	// at once. One more is refused at hello with rate_limited and closed
	// (1013): the device connects again later, once others have left.
	MaxConnections int `json:"max_connections,omitempty"`
	// PushesPerSecond is the sustained rate at which the app's devices,
	// all of them together, may push. A push past it is answered
	// rate_limited, with retry_ms the wait until the app may push again;
	// the connection stays open. A push refused for stored bytes, or as
	// invalid, has used its turn.
	PushesPerSecond float64 `json:"pushes_per_second,omitempty"`
	// PushBurst is how many pushes may come at once before the rate
	// applies: the size of the app's token bucket. Default:
	// PushesPerSecond rounded up, at least 1.
	PushBurst int `json:"push_burst,omitempty"`
	// MaxStoredBytes bounds the bytes the app's records take in the store
	// (snapshots and tails, as Store.Usage counts them). A push that would
	// take the app past it is refused with quota_exceeded and nothing of
	// it is stored.
	MaxStoredBytes int64 `json:"max_stored_bytes,omitempty"`
}

// Check reports every field that no relay can enforce, each error naming
// the field by its JSON key; they are joined (see errors.Join).
func (q Quota) Check() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if q.MaxConnections < 0 {
		bad("max_connections", "%d is negative (leave it out for no limit)", q.MaxConnections)
	}
	switch r := q.PushesPerSecond; {
	case math.IsNaN(r) || math.IsInf(r, 0):
		bad("pushes_per_second", "%v is not a number of pushes", r)
	case r < 0:
		bad("pushes_per_second", "%v is negative (leave it out for no limit)", r)
	}
	switch {
	case q.PushBurst < 0:
		bad("push_burst", "%d is negative (leave it out for the default)", q.PushBurst)
	case q.PushBurst > 0 && !(q.PushesPerSecond > 0):
		bad("push_burst", "needs pushes_per_second, the rate the burst refills at")
	}
	if q.MaxStoredBytes < 0 {
		bad("max_stored_bytes", "%d is negative (leave it out for no limit)", q.MaxStoredBytes)
	}
	return errors.Join(errs...)
}

// Quota kinds: the values of the quota label of
// ferry_relay_quota_refusals_total.
const (
	quotaConnections = "connections"
	quotaPushRate    = "push_rate"
	quotaStoredBytes = "stored_bytes"
)

// usageRefresh is how often an app's stored bytes are read again from the
// store (Store.Usage) while it pushes. Between reads the relay counts what
// its own pushes add.
const usageRefresh = 5 * time.Second

// quotas enforces Options.Quotas. Each app has its own state and lock, and
// the map of apps is fixed when the server is made (read without a lock),
// so an app at its limits never makes another app's requests wait.
type quotas struct {
	apps  map[string]*appQuota
	store Store
	now   func() time.Time
	log   *slog.Logger
}

// appQuota is one app's quota and what it is using.
type appQuota struct {
	id      string
	q       Quota
	burst   int
	refused map[string]prometheus.Counter // by quota kind; set by count

	// The push rate is a token bucket kept as the time its next token is
	// due (the generic cell rate algorithm), in whole nanoseconds, so
	// retry_ms is exact: a push is admitted while that time is at most
	// tau ahead of now, and moves it on by interval.
	interval time.Duration // 1 / PushesPerSecond
	tau      time.Duration // (burst-1) intervals

	mu    sync.Mutex
	conns int       // connections counted against MaxConnections
	tat   time.Time // when the app's next push token is due

	// Stored bytes: stored is what the store held at the last refresh,
	// plus what pushes answered since have added; reserved is what pushes
	// admitted and not yet answered may add. A push is admitted only if
	// stored+reserved+its bytes fit.
	stored    int64
	reserved  int64
	loaded    bool          // stored has been read from the store once
	refreshed time.Time     // when it was last read (by the server's clock)
	refresh   chan struct{} // non-nil while a read is in flight; closed when it ends
	since     int64         // bytes added by pushes answered while a read is in flight
}

// newQuotas checks o.Quotas against o.Auth's apps. It keeps its own copy,
// so the Options may change afterwards.
func newQuotas(o *Options) (*quotas, error) {
	qs := &quotas{apps: map[string]*appQuota{}, store: o.Store, now: o.Now, log: o.Logger}
	ids := make([]string, 0, len(o.Quotas))
	for id := range o.Quotas {
		ids = append(ids, id)
	}
	slices.Sort(ids) // errors in a stable order
	var errs []error
	for _, id := range ids {
		q := o.Quotas[id]
		if !o.Auth.hasApp(id) {
			errs = append(errs, fmt.Errorf("relay: quota of app %q: no such app", id))
			continue
		}
		if err := q.Check(); err != nil {
			errs = append(errs, fmt.Errorf("relay: quota of app %q: %w", id, err))
			continue
		}
		if q == (Quota{}) {
			continue
		}
		aq := &appQuota{id: id, q: q}
		if q.PushesPerSecond > 0 {
			aq.burst = q.PushBurst
			if aq.burst == 0 {
				aq.burst = int(min(math.Ceil(q.PushesPerSecond), 1<<20))
			}
			// Bounded, so that a rate of a push a century cannot overflow.
			interval := min(float64(time.Second)/q.PushesPerSecond, float64(maxRetry))
			aq.interval = max(time.Duration(interval), 1)
			aq.tau = time.Duration(min(float64(aq.burst-1)*float64(aq.interval), float64(maxRetry)))
		}
		qs.apps[id] = aq
	}
	return qs, errors.Join(errs...)
}

// count makes refused the metric of refusals: each app gets a series for
// each quota it has, at 0 from the start, and for nothing else, so the
// configured apps bound the labels.
func (qs *quotas) count(refused *prometheus.CounterVec) {
	for id, aq := range qs.apps {
		aq.refused = map[string]prometheus.Counter{}
		for kind, set := range map[string]bool{
			quotaConnections: aq.q.MaxConnections > 0,
			quotaPushRate:    aq.q.PushesPerSecond > 0,
			quotaStoredBytes: aq.q.MaxStoredBytes > 0,
		} {
			if set {
				aq.refused[kind] = refused.WithLabelValues(id, kind)
			}
		}
	}
}

// connect counts a new connection of app against its MaxConnections, or
// returns the error it is refused with. Every nil return is matched by a
// disconnect.
func (qs *quotas) connect(app string) *transport.Error {
	aq := qs.apps[app]
	if aq == nil || aq.q.MaxConnections == 0 {
		return nil
	}
	aq.mu.Lock()
	defer aq.mu.Unlock()
	if aq.conns >= aq.q.MaxConnections {
		aq.refused[quotaConnections].Inc()
		return perr(transport.CodeRateLimited, "app %q has its max_connections (%d) open; connect again later", app, aq.q.MaxConnections)
	}
	aq.conns++
	return nil
}

// disconnect ends a connection that connect counted ("" for a session
// that never got that far).
func (qs *quotas) disconnect(app string) {
	aq := qs.apps[app]
	if aq == nil || aq.q.MaxConnections == 0 {
		return
	}
	aq.mu.Lock()
	defer aq.mu.Unlock()
	aq.conns--
}

// admitPush checks a push of app against its push rate and stored bytes.
// If it is admitted, done must be called once the push is answered, with
// whether it was stored; otherwise the error is the answer.
//
// A push is measured by the change bytes it carries: what it adds to the
// store, except for changes the relay held already (which it does not
// store again) until the next refresh corrects the count.
func (qs *quotas) admitPush(ctx context.Context, app string, p *transport.Push) (done func(stored bool), err error) {
	aq := qs.apps[app]
	if aq == nil {
		return func(bool) {}, nil
	}
	if aq.q.PushesPerSecond > 0 {
		if wait := aq.take(qs.now()); wait > 0 {
			aq.refused[quotaPushRate].Inc()
			e := perr(transport.CodeRateLimited, "app %q is over its push rate (%g a second, burst %d): push again in %v", app, aq.q.PushesPerSecond, aq.burst, wait)
			e.RetryMS = retryMS(wait)
			return nil, e
		}
	}
	if aq.q.MaxStoredBytes == 0 {
		return func(bool) {}, nil
	}
	var need int64
	for _, r := range p.Records {
		need += int64(len(r.Data))
	}
	if err := qs.refreshUsage(ctx, aq); err != nil {
		return nil, err
	}
	aq.mu.Lock()
	used := aq.stored + aq.reserved
	if used+need > aq.q.MaxStoredBytes {
		aq.mu.Unlock()
		aq.refused[quotaStoredBytes].Inc()
		return nil, perr(transport.CodeQuotaExceeded, "app %q stores about %d bytes (pushes in progress included); this push's %d would pass its max_stored_bytes %d; nothing was stored",
			app, used, need, aq.q.MaxStoredBytes)
	}
	aq.reserved += need
	aq.mu.Unlock()
	return func(stored bool) {
		aq.mu.Lock()
		defer aq.mu.Unlock()
		aq.reserved -= need
		if stored {
			aq.stored += need
			if aq.refresh != nil {
				aq.since += need
			}
		}
	}, nil
}

// take takes one push from the app's token bucket at now, or returns how
// long until one is there.
func (aq *appQuota) take(now time.Time) time.Duration {
	aq.mu.Lock()
	defer aq.mu.Unlock()
	// A full bucket: the next token is due now. (A clock that steps back
	// refills nothing.)
	if aq.tat.Before(now) {
		aq.tat = now
	}
	if wait := aq.tat.Sub(now) - aq.tau; wait > 0 {
		return wait
	}
	aq.tat = aq.tat.Add(aq.interval)
	return 0
}

// maxRetry is the longest wait retry_ms can carry.
const maxRetry = time.Duration(math.MaxUint32) * time.Millisecond

// retryMS is wait in whole milliseconds, rounded up, within retry_ms's
// range.
func retryMS(wait time.Duration) uint32 {
	ms := (min(wait, maxRetry) + time.Millisecond - 1) / time.Millisecond
	return uint32(max(ms, 1))
}

// refreshUsage reads the app's stored bytes from the store if they were
// never read, or were read more than usageRefresh ago, so that each app
// costs at most one Usage call per usageRefresh. While a read is in
// flight other pushes use the count as it is; only an app's very first
// pushes wait for its first read. A failed read keeps the count it had (if
// any) until the next refresh is due.
func (qs *quotas) refreshUsage(ctx context.Context, aq *appQuota) error {
	for {
		aq.mu.Lock()
		now := qs.now()
		age := now.Sub(aq.refreshed)
		if aq.loaded && (aq.refresh != nil || age >= 0 && age < usageRefresh) {
			aq.mu.Unlock()
			return nil
		}
		if wait := aq.refresh; wait != nil {
			// The first read is in flight: nothing to go on until it ends.
			aq.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		ch := make(chan struct{})
		aq.refresh, aq.since = ch, 0
		aq.mu.Unlock()

		u, err := qs.store.Usage(ctx, aq.id)

		aq.mu.Lock()
		aq.refresh = nil
		close(ch)
		loaded := aq.loaded
		if err == nil {
			// Pushes answered during the read may be in u already: counted
			// twice until the next refresh, which errs on the safe side.
			aq.stored, aq.loaded, aq.refreshed = u.Bytes+aq.since, true, now
		} else if loaded {
			aq.refreshed = now
		}
		aq.mu.Unlock()
		switch {
		case err == nil:
			return nil
		case loaded:
			qs.log.Warn("reading an app's stored bytes for its quota; keeping the last count", "app", aq.id, "err", err)
			return nil
		}
		return fmt.Errorf("relay: stored bytes of app %q, for its quota: %w", aq.id, err)
	}
}
