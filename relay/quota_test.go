package relay_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// gatedStore lets a test count Usage calls and hold Usage or Append at a
// gate, by tenant.
type gatedStore struct {
	relay.Store

	mu       sync.Mutex
	usages   map[string]int
	onUsage  func(tenant string)            // before Usage, if set
	onAppend func(c relay.Coll) (err error) // before Append, if set; an error is returned instead
}

func newGatedStore() *gatedStore {
	return &gatedStore{Store: memstore.New(), usages: map[string]int{}}
}

func (g *gatedStore) Usage(ctx context.Context, tenant string) (relay.Usage, error) {
	g.mu.Lock()
	g.usages[tenant]++
	hook := g.onUsage
	g.mu.Unlock()
	if hook != nil {
		hook(tenant)
	}
	return g.Store.Usage(ctx, tenant)
}

func (g *gatedStore) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, es []relay.Entry) (uint64, error) {
	g.mu.Lock()
	hook := g.onAppend
	g.mu.Unlock()
	if hook != nil {
		if err := hook(c); err != nil {
			return 0, err
		}
	}
	return g.Store.Append(ctx, c, fence, now, es)
}

func (g *gatedStore) usageCalls(tenant string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.usages[tenant]
}

func (g *gatedStore) set(f func(*gatedStore)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f(g)
}

// newRecord is a push of one new record n: valid changes, about 100
// bytes.
func newRecord(t testing.TB, coll string, n int) *transport.Push {
	return pushOf(coll, 0, rec(fmt.Sprintf("r%d", n), storetest.NewEditor(t, "").Edit(map[string]any{"n": n})))
}

func pushBytes(p *transport.Push) int64 {
	var n int64
	for _, r := range p.Records {
		n += int64(len(r.Data))
	}
	return n
}

// refusals reads ferry_relay_quota_refusals_total for app and quota ("" if
// the series does not exist).
func (tr *testRelay) refusals(app, quota string) string {
	line := tr.metric(`ferry_relay_quota_refusals_total{app="` + app + `",quota="` + quota + `"}`)
	if line == "" {
		return ""
	}
	return line[strings.LastIndexByte(line, ' ')+1:]
}

// The push rate is a token bucket per app: a burst, then the rate. A push
// past it is answered rate_limited with retry_ms, the exact wait by the
// relay's clock, and the connection stays open.
func TestQuotaPushRate(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.Quotas = map[string]relay.Quota{"shop": {PushesPerSecond: 4, PushBurst: 2}}
	})
	c := tr.client("shop")
	for i := range 2 {
		mustCall[transport.Ack](t, c, newRecord(t, "c", i))
	}
	p := newRecord(t, "c", 2)
	wantRetry := func(ms uint32) {
		t.Helper()
		_, err := call[transport.Ack](t, c, p)
		var e *transport.Error
		if !errors.As(err, &e) || e.Code != transport.CodeRateLimited || e.RetryMS != ms {
			t.Fatalf("push past the burst: %v (retry_ms %d), want rate_limited with retry_ms %d", err, e.RetryMS, ms)
		}
	}
	wantRetry(250) // 4 a second: one every 250 ms
	tr.clock.Advance(100 * time.Millisecond)
	wantRetry(150)
	tr.clock.Advance(150 * time.Millisecond)
	mustCall[transport.Ack](t, c, p) // the connection stayed open
	wantRetry(250)
	// A long pause refills the burst, no more.
	tr.clock.Advance(time.Minute)
	mustCall[transport.Ack](t, c, p)
	mustCall[transport.Ack](t, c, p)
	wantRetry(250)
	if got := tr.refusals("shop", "push_rate"); got != "4" {
		t.Fatalf("push_rate refusals = %q, want 4", got)
	}
	if got := tr.metric(`ferry_relay_requests_total{result="rate_limited",type="push"}`); !strings.HasSuffix(got, " 4") {
		t.Fatalf("requests metric: %q, want 4 rate_limited pushes", got)
	}
	// Other requests are not rate limited.
	mustCall[transport.Changes](t, c, &transport.Pull{Collection: "c"})
}

// One app hammering past its push rate does not hold back another: while
// shop's devices are being refused, rival's pushes all go through, none
// rate limited. Each app has its own bucket: rival's burst of 20 on a
// clock that does not move allows exactly 20 of its pushes.
func TestQuotaAppOverPushRateDoesNotHoldBackAnother(t *testing.T) {
	const n = 20
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.Quotas = map[string]relay.Quota{
			"shop":  {PushesPerSecond: 1, PushBurst: 1},
			"rival": {PushesPerSecond: 1, PushBurst: n},
		}
	})
	// shop spends its burst, then hammers from two devices until rival is
	// done, every answer rate_limited.
	mustCall[transport.Ack](t, tr.client("shop"), newRecord(t, "c", 0))
	stop := make(chan struct{})
	refusedOnce := make(chan struct{}, 2)
	var refused sync.WaitGroup
	counts := make([]int, 2)
	errs := make(chan error, 2)
	for d := range 2 {
		c, p := tr.client("shop"), newRecord(t, "c", 100+d)
		refused.Add(1)
		go func() {
			defer refused.Done()
			for i := 0; ; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err := c.Call(ctx, p, &transport.Ack{})
				cancel()
				if !errors.Is(err, transport.ErrRateLimited) {
					errs <- fmt.Errorf("shop's push %d: %v, want rate_limited", i, err)
					return
				}
				counts[d]++
				if i == 0 {
					refusedOnce <- struct{}{}
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	<-refusedOnce
	<-refusedOnce
	// rival pushes from two devices at once while shop is refused.
	var wg sync.WaitGroup
	rivalErrs := make(chan error, n)
	for d := range 2 {
		c := tr.client("rival")
		var pushes []*transport.Push
		for i := range n / 2 {
			pushes = append(pushes, newRecord(t, "c", d*n+i))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, p := range pushes {
				if _, err := call[transport.Ack](t, c, p); err != nil {
					rivalErrs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	refused.Wait()
	close(rivalErrs)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for err := range rivalErrs {
		t.Errorf("rival's push: %v", err)
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("shop was refused %d times while rival pushed %d times", counts[0]+counts[1], n)
	if _, err := call[transport.Ack](t, tr.client("rival"), newRecord(t, "c", 999)); !errors.Is(err, transport.ErrRateLimited) {
		t.Fatalf("rival's push past its own burst: %v, want rate_limited", err)
	}
	if got, want := tr.refusals("shop", "push_rate"), fmt.Sprint(counts[0]+counts[1]); got != want {
		t.Fatalf("shop's push_rate refusals = %s, want %s", got, want)
	}
	if got := tr.refusals("rival", "push_rate"); got != "1" {
		t.Fatalf("rival's push_rate refusals = %s, want 1 (the push past its burst)", got)
	}
	head, err := tr.store.Head(context.Background(), relay.Coll{Tenant: "rival", Collection: "c"})
	if err != nil || head != n {
		t.Fatalf("rival's log head %d (%v), want %d", head, err, n)
	}
}

// An app reading its stored bytes for the first time (a slow store) holds
// up only its own pushes: another app's go through meanwhile.
func TestQuotaUsageReadDoesNotHoldBackAnother(t *testing.T) {
	store := newGatedStore()
	tr := newTestRelay(t, store, func(o *relay.Options) {
		o.Quotas = map[string]relay.Quota{"shop": {MaxStoredBytes: 1 << 20}, "rival": {MaxStoredBytes: 1 << 20}}
	})
	entered, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // before the relay closes, on failure
	store.set(func(g *gatedStore) {
		g.onUsage = func(tenant string) {
			if tenant == "shop" {
				close(entered)
				<-release
			}
		}
	})
	shopDone := make(chan error, 1)
	c := tr.client("shop")
	go func() {
		_, err := call[transport.Ack](t, c, newRecord(t, "c", 0))
		shopDone <- err
	}()
	<-entered
	r := tr.client("rival")
	for i := range 10 {
		mustCall[transport.Ack](t, r, newRecord(t, "c", i))
	}
	select {
	case err := <-shopDone:
		t.Fatalf("shop's push was answered (%v) while its usage read was held", err)
	default:
	}
	releaseOnce.Do(func() { close(release) })
	if err := <-shopDone; err != nil {
		t.Fatalf("shop's push: %v", err)
	}
}

// A push that would take its app past max_stored_bytes is refused with
// quota_exceeded and nothing of it is stored. The app's stored bytes are
// read from the store once, counted as pushes add to them, and read again
// only once relay.UsageRefresh has passed on the relay's clock.
func TestQuotaStoredBytes(t *testing.T) {
	store := newGatedStore()
	p1, p2, p3 := newRecord(t, "c", 1), newRecord(t, "c", 2), newRecord(t, "c", 3)
	limit := pushBytes(p1) + pushBytes(p2)
	tr := newTestRelay(t, store, func(o *relay.Options) {
		o.Quotas = map[string]relay.Quota{"shop": {MaxStoredBytes: limit}}
	})
	c := tr.client("shop")
	mustCall[transport.Ack](t, c, p1)
	mustCall[transport.Ack](t, c, p2) // exactly at the quota
	if n := store.usageCalls("shop"); n != 1 {
		t.Fatalf("%d Usage calls for two pushes, want 1", n)
	}
	ctx := context.Background()
	before, _ := store.Usage(ctx, "shop")
	if before.Bytes != limit {
		t.Fatalf("shop stores %d bytes, want %d: the pushes' bytes are what the store counts", before.Bytes, limit)
	}
	_, err := call[transport.Ack](t, c, p3)
	if !errors.Is(err, transport.ErrQuotaExceeded) || !strings.Contains(err.Error(), "max_stored_bytes") {
		t.Fatalf("push past the quota: %v, want quota_exceeded naming max_stored_bytes", err)
	}
	after, _ := store.Usage(ctx, "shop")
	head, _ := store.Head(ctx, relay.Coll{Tenant: "shop", Collection: "c"})
	if after != before || head != 2 {
		t.Fatalf("after a refused push: usage %+v (was %+v), head %d (want 2)", after, before, head)
	}
	// Another app is not affected.
	mustCall[transport.Ack](t, tr.client("rival"), p3)
	// The store is read again only once relay.UsageRefresh has passed (the
	// calls above by the test itself count 2).
	if n := store.usageCalls("shop"); n != 3 {
		t.Fatalf("%d Usage calls, want 3 (one by the relay, two by the test)", n)
	}
	tr.clock.Advance(relay.UsageRefresh)
	if _, err := call[transport.Ack](t, c, p3); !errors.Is(err, transport.ErrQuotaExceeded) {
		t.Fatalf("push past the quota after a refresh: %v", err)
	}
	if n := store.usageCalls("shop"); n != 4 {
		t.Fatalf("%d Usage calls, want 4: one refresh after relay.UsageRefresh", n)
	}
	if got := tr.refusals("shop", "stored_bytes"); got != "2" {
		t.Fatalf("stored_bytes refusals = %q, want 2", got)
	}
}

// What another relay process writes to the store is seen at the next
// refresh: until then it can take the app past its quota (the documented
// overshoot), after it pushes are refused.
func TestQuotaStoredBytesRefreshSeesOtherWriters(t *testing.T) {
	store := newGatedStore()
	tr := newTestRelay(t, store, func(o *relay.Options) {
		o.Quotas = map[string]relay.Quota{"shop": {MaxStoredBytes: 2000}}
	})
	c := tr.client("shop")
	mustCall[transport.Ack](t, c, newRecord(t, "c", 1))
	// "Another relay" stores 1,900 bytes for shop.
	if _, err := store.Append(context.Background(), relay.Coll{Tenant: "shop", Collection: "elsewhere"}, 0, tr.clock.Now(), []relay.Entry{bsEntry("x", nil, strings.Repeat("z", 1900))}); err != nil {
		t.Fatal(err)
	}
	mustCall[transport.Ack](t, c, newRecord(t, "c", 2)) // not seen yet
	tr.clock.Advance(relay.UsageRefresh)
	if _, err := call[transport.Ack](t, c, newRecord(t, "c", 3)); !errors.Is(err, transport.ErrQuotaExceeded) {
		t.Fatalf("push after the refresh: %v, want quota_exceeded", err)
	}
}

// A push in progress reserves its bytes: a second push that would fit
// only without the first is refused while the first is being written, and
// admitted once the first has failed and released them.
func TestQuotaStoredBytesReservedWhilePushing(t *testing.T) {
	store := newGatedStore()
	p1, p2 := newRecord(t, "a", 1), newRecord(t, "b", 2)
	tr := newTestRelay(t, store, func(o *relay.Options) {
		o.Quotas = map[string]relay.Quota{"shop": {MaxStoredBytes: pushBytes(p1) + pushBytes(p2) - 1}}
	})
	entered, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // before the relay closes, on failure
	store.set(func(g *gatedStore) {
		g.onAppend = func(c relay.Coll) error {
			if c.Collection != "a" {
				return nil
			}
			close(entered)
			<-release
			return errors.New("injected append failure")
		}
	})
	first := make(chan error, 1)
	c1, c2 := tr.client("shop"), tr.client("shop")
	go func() {
		_, err := call[transport.Ack](t, c1, p1)
		first <- err
	}()
	<-entered
	if _, err := call[transport.Ack](t, c2, p2); !errors.Is(err, transport.ErrQuotaExceeded) {
		t.Fatalf("push while another's bytes are reserved: %v, want quota_exceeded", err)
	}
	releaseOnce.Do(func() { close(release) })
	if err := <-first; !errors.Is(err, transport.ErrInternal) {
		t.Fatalf("first push: %v, want internal (the store failed)", err)
	}
	mustCall[transport.Ack](t, c2, p2)
}

// max_connections refuses one connection more at hello, with rate_limited
// and close 1013; a refused hello does not count, and a connection that
// ends makes room. Another app is not affected.
func TestQuotaConnections(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.Quotas = map[string]relay.Quota{"shop": {MaxConnections: 2}}
	})
	ended := make(chan struct{}, 8)
	*tr.srv.HookSessionEnded() = func() { ended <- struct{}{} }
	shop := tr.apps["shop"]
	a := tr.client("shop")
	tr.client("shop")
	for range 2 {
		_, _, err := tr.dial(shop.APIKey, tr.tokens["shop"], "third")
		if !errors.Is(err, transport.ErrRateLimited) || transport.CloseStatus(err) != transport.CloseTryAgainLater || !strings.Contains(err.Error(), "max_connections") {
			t.Fatalf("third connection: %v (close %d), want rate_limited naming max_connections, close 1013", err, transport.CloseStatus(err))
		}
		<-ended
	}
	for range 3 {
		tr.client("rival")
	}
	a.Close()
	<-ended
	tr.client("shop") // room for exactly one more
	if _, _, err := tr.dial(shop.APIKey, tr.tokens["shop"], "fourth"); !errors.Is(err, transport.ErrRateLimited) {
		t.Fatalf("connection past the quota again: %v", err)
	}
	if got := tr.refusals("shop", "connections"); got != "3" {
		t.Fatalf("connections refusals = %q, want 3", got)
	}
	if got := tr.metric(`ferry_relay_requests_total{result="rate_limited",type="hello"}`); !strings.HasSuffix(got, " 3") {
		t.Fatalf("requests metric: %q, want 3 rate_limited hellos", got)
	}
}

// Series exist only for the apps and quotas configured; apps without a
// quota get none, so the labels are bounded by the configuration.
func TestQuotaMetricSeries(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.Quotas = map[string]relay.Quota{"shop": {MaxConnections: 1, MaxStoredBytes: 10}}
	})
	for _, q := range []string{"connections", "stored_bytes"} {
		if got := tr.refusals("shop", q); got != "0" {
			t.Errorf("shop %s: %q, want a series at 0", q, got)
		}
	}
	for app, q := range map[string]string{"shop": "push_rate", "rival": "connections"} {
		if got := tr.refusals(app, q); got != "" {
			t.Errorf("%s %s: a series (%s) for a quota not configured", app, q, got)
		}
	}
}

func TestQuotaOptionsChecked(t *testing.T) {
	auth, err := relay.NewAuth([]relay.App{relay.NewApp("shop")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		quotas map[string]relay.Quota
		want   []string
	}{
		{"unknown app", map[string]relay.Quota{"shp": {MaxConnections: 1}}, []string{`app "shp": no such app`}},
		{"negative", map[string]relay.Quota{"shop": {MaxConnections: -1, PushesPerSecond: -2, MaxStoredBytes: -3}},
			[]string{"max_connections: -1 is negative", "pushes_per_second: -2 is negative", "max_stored_bytes: -3 is negative"}},
		{"burst without rate", map[string]relay.Quota{"shop": {PushBurst: 5}}, []string{"push_burst: needs pushes_per_second"}},
		{"negative burst", map[string]relay.Quota{"shop": {PushesPerSecond: 1, PushBurst: -1}}, []string{"push_burst: -1 is negative"}},
		{"not a number", map[string]relay.Quota{"shop": {PushesPerSecond: math.NaN()}}, []string{"pushes_per_second: NaN"}},
		{"infinite", map[string]relay.Quota{"shop": {PushesPerSecond: math.Inf(1)}}, []string{"pushes_per_second: +Inf"}},
	} {
		srv, err := relay.NewServer(&relay.Options{Store: memstore.New(), Auth: auth, Quotas: tc.quotas})
		if err == nil {
			srv.Close()
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", tc.name, err, w)
			}
		}
	}
	// Zero is no limit, and a zero Quota is no quota.
	srv, err := relay.NewServer(&relay.Options{Store: memstore.New(), Auth: auth, Quotas: map[string]relay.Quota{"shop": {}}})
	if err != nil {
		t.Fatalf("zero quota: %v", err)
	}
	srv.Close()
}

// automerge-repo connections count against max_connections as devices'
// do: one past the quota is refused with a message naming it, and one
// that ends makes room.
func TestQuotaConnectionsCountAutomergeRepo(t *testing.T) {
	tr := newTestRelay(t, memstore.New(), func(o *relay.Options) {
		o.Quotas = map[string]relay.Quota{"shop": {MaxConnections: 2}}
	})
	ended := make(chan struct{}, 8)
	*tr.srv.HookSessionEnded() = func() { ended <- struct{}{} }
	device := tr.client("shop")
	browser, m := tr.joinAM(t, "browser")
	if m.Type != "peer" {
		t.Fatalf("first automerge-repo connection: %+v", m)
	}
	_, m = tr.joinAM(t, "one-too-many")
	if m.Type != "error" || !strings.Contains(m.Message, "max_connections") {
		t.Fatalf("connection past the quota answered %+v", m)
	}
	if _, _, err := tr.dial(tr.apps["shop"].APIKey, tr.tokens["shop"], "third"); !errors.Is(err, transport.ErrRateLimited) {
		t.Fatalf("device past a quota filled by a browser: %v", err)
	}
	<-ended
	if got := tr.refusals("shop", "connections"); got != "2" {
		t.Fatalf("connections refusals = %q, want 2", got)
	}
	browser.CloseNow()
	<-ended
	device.Close()
	<-ended
	// Both gone: room for two again, of either kind.
	for _, id := range []string{"again", "and-again"} {
		if _, m := tr.joinAM(t, id); m.Type != "peer" {
			t.Fatalf("after both closed: %+v", m)
		}
	}
}
