package relay_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/relaytest"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
)

// hangingTransport serves a JWKS in-process, as handlerTransport does,
// until hang is set: then a request is held until its context ends (or
// release is closed), as a provider that accepts the connection and never
// answers would hold it.
type hangingTransport struct {
	h       http.Handler
	release chan struct{}

	mu    sync.Mutex
	hang  bool
	hung  int     // requests held
	ended []error // why each held request ended
}

func (ht *hangingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ht.mu.Lock()
	hang := ht.hang
	if hang {
		ht.hung++
	}
	ht.mu.Unlock()
	if !hang {
		return handlerTransport{ht.h}.RoundTrip(r)
	}
	var err error
	select {
	case <-r.Context().Done():
		err = r.Context().Err()
	case <-ht.release:
		err = errors.New("released at the end of the test")
	}
	ht.mu.Lock()
	ht.ended = append(ht.ended, err)
	ht.mu.Unlock()
	return nil, err
}

// state is how many requests were held, and how each held one ended.
func (ht *hangingTransport) state() (hung int, ended []error) {
	ht.mu.Lock()
	defer ht.mu.Unlock()
	return ht.hung, slices.Clone(ht.ended)
}

// A JWKS fetch from a provider that never answers is given up 10 s after
// it began (as docs/operations.md says), not before: the hello that
// prompted it (a token naming a kid the set lacks) is refused then, the
// failure is logged as "JWKS fetch failed", and the last good set goes on
// verifying, during the wait and after. In a synctest bubble, the provider
// served in-process: the 10 s are fake.
func TestJWKSFetchTimeoutKeepsLastSet(t *testing.T) {
	idp := relaytest.StartIdP(t)
	idp.AddKey(t, "k1", "EdDSA")
	synctest.Test(t, func(t *testing.T) {
		ht := &hangingTransport{h: idp.Handler(), release: make(chan struct{})}
		t.Cleanup(func() { close(ht.release) })
		var logs bytes.Buffer
		var mu sync.Mutex
		app := idpApp(idp)
		a, err := relay.NewAuthWith([]relay.App{app}, &relay.AuthOptions{
			HTTPClient: &http.Client{Transport: ht},
			Logger:     slog.New(slog.NewTextHandler(&logWriter{w: &logs, mu: &mu}, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		tok := func(kid string) string { return idp.Token(t, kid, "ann", "notes", time.Now(), time.Hour, nil) }
		_, c1, err := a.Verify(app.APIKey, tok("k1"))
		if err != nil {
			t.Fatal(err)
		}

		// The provider adds k2 and stops answering. Past the rate limit,
		// a k2 token prompts a fetch, which hangs.
		idp.AddKey(t, "k2", "EdDSA")
		ht.mu.Lock()
		ht.hang = true
		ht.mu.Unlock()
		time.Sleep(relay.JWKSMinRefresh)
		start := time.Now()
		type result struct {
			err   error
			after time.Duration
		}
		got := make(chan result, 1)
		go func() {
			_, _, err := a.Verify(app.APIKey, tok("k2"))
			got <- result{err, time.Since(start)}
		}()
		synctest.Wait()
		if hung, _ := ht.state(); hung != 1 {
			t.Fatalf("%d fetches held, want the one the unknown kid prompted", hung)
		}

		time.Sleep(10*time.Second - time.Millisecond)
		synctest.Wait()
		select {
		case r := <-got:
			t.Fatalf("verify returned %v after %v, before the fetch limit", r.err, r.after)
		default:
		}
		if _, ended := ht.state(); len(ended) != 0 {
			t.Fatalf("fetch abandoned before the 10 s limit: %v", ended)
		}
		// The hung fetch holds up only tokens that need it.
		if _, _, err := a.Verify(app.APIKey, tok("k1")); err != nil {
			t.Fatalf("k1 while a fetch hangs: %v", err)
		}

		time.Sleep(time.Millisecond)
		synctest.Wait()
		var r result
		select {
		case r = <-got:
		default:
			t.Fatalf("verify still waiting on the fetch %v after it began", time.Since(start))
		}
		wantRefused(t, "kid of a provider that does not answer", r.err, relay.CheckKey, relay.ErrUnauthenticated)
		if _, ended := ht.state(); len(ended) != 1 || !errors.Is(ended[0], context.DeadlineExceeded) {
			t.Fatalf("held fetch ended with %v, want its deadline", ended)
		}
		mu.Lock()
		log := logs.String()
		mu.Unlock()
		if !strings.Contains(log, "JWKS fetch failed") || !strings.Contains(log, "deadline exceeded") {
			t.Errorf("log does not report the abandoned fetch: %s", log)
		}

		// The last good set is still used.
		if _, _, err := a.Verify(app.APIKey, tok("k1")); err != nil {
			t.Errorf("k1 after the fetch was abandoned: %v", err)
		}
		if err := a.Check(c1, time.Now()); err != nil {
			t.Errorf("re-check after the fetch was abandoned: %v", err)
		}
	})
}

// A record whose compaction fails is tried again 1 minute later, then
// after 2, 4, 8, 16 and 32 minutes, and then every hour: never before its
// wait is over, and at the first round once it is. The relay's clock is
// the test's, and rounds are run by hand, as in
// TestCompactionSkipsFailingRecords.
func TestCompactionFailureBackoff(t *testing.T) {
	store := &damagingStore{Store: memstore.New(), junk: make([]byte, 16)}
	tr := newTestRelay(t, store, func(o *relay.Options) { o.CompactInterval, o.LogRetention = -1, -1 })
	c := tr.client("shop")
	rng := rand.New(rand.NewPCG(11, 12))
	ed := storetest.NewEditor(t, "ab0001")
	// Two pushes of 2.5 KB: a tail over CompactTailBytes.
	for range 2 {
		mustCall[transport.Ack](t, c, pushOf("c", 0, rec("bad1", ed.Edit(map[string]any{"pad": noise(rng, 2500)}))))
	}
	store.damage.Store(true)
	ctx := context.Background()

	// attempts runs a round and counts the reads of the failing record:
	// one per compaction tried.
	attempts := func() int64 {
		t.Helper()
		reads := store.badReads.Load()
		if _, err := tr.srv.CompactRound(ctx); err != nil {
			t.Fatal(err)
		}
		return store.badReads.Load() - reads
	}
	if n := attempts(); n != 1 {
		t.Fatalf("first round tried the record %d times, want 1", n)
	}
	waits := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute,
		16 * time.Minute, 32 * time.Minute, time.Hour, time.Hour, time.Hour}
	for i, wait := range waits {
		tr.clock.Advance(wait - time.Millisecond)
		if n := attempts(); n != 0 {
			t.Fatalf("failure %d: tried again %v after it, before the %v wait was over", i+1, wait-time.Millisecond, wait)
		}
		tr.clock.Advance(time.Millisecond)
		if n := attempts(); n != 1 {
			t.Fatalf("failure %d: tried %d times once its %v wait was over, want 1", i+1, n, wait)
		}
	}
	if got := tr.srv.FailingRecords(); got != 1 {
		t.Fatalf("%d records remembered as failing, want 1", got)
	}
	if got, want := tr.metric("ferry_relay_compaction_failing_records"), "ferry_relay_compaction_failing_records 1"; got != want {
		t.Errorf("metric: %q, want %q", got, want)
	}
}

// The relay pings each device every 15 s (PingInterval, its default) and
// drops one that has not answered a ping 10 s later, without a close
// frame; the drop shows in ferry_relay_connections. A device whose reader
// runs answers the pings and stays. On the in-memory network, in a
// synctest bubble: the 25 s are fake. The devices do not ping, so only
// the relay's keepalive moves anything.
func TestRelayKeepaliveDropsDeadDevice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := prometheus.NewRegistry()
		rl := relaytest.Start(t, &relaytest.Options{Pipe: true, Relay: relay.Options{PingInterval: 15 * time.Second, Registry: reg}})
		connections := func() float64 {
			t.Helper()
			mf := gather(t, reg)["ferry_relay_connections"]
			if mf == nil {
				t.Fatal("no ferry_relay_connections")
			}
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
		start := time.Now()
		// dead says hello and never reads again: its pongs never go out.
		dead := dialPipe(t, rl)
		env, err := transport.NewEnvelope(1, &transport.Hello{APIKey: rl.App.APIKey, Token: rl.Token, ReplicaID: "dead", Versions: transport.SupportedVersions()})
		if err != nil {
			t.Fatal(err)
		}
		if err := dead.Send(context.Background(), env); err != nil {
			t.Fatal(err)
		}
		alive := transport.NewClient(dialPipe(t, rl), nil)
		t.Cleanup(func() { alive.Close() })
		hello := &transport.Hello{APIKey: rl.App.APIKey, Token: rl.Token, ReplicaID: "alive", Versions: transport.SupportedVersions()}
		if err := alive.Call(context.Background(), hello, &transport.Welcome{}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if n := connections(); n != 2 {
			t.Fatalf("%v connections, want 2", n)
		}

		time.Sleep(25*time.Second - time.Millisecond - time.Since(start))
		synctest.Wait()
		if n := connections(); n != 2 {
			t.Fatalf("%v connections %v after connecting, before the ping timed out; want 2", n, time.Since(start))
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if n := connections(); n != 1 {
			t.Fatalf("%v connections %v after connecting, once the first ping timed out; want 1", n, time.Since(start))
		}

		// The dead device finds its welcome, then a connection cut without
		// a close frame.
		var rerr error
		for range 3 {
			if _, rerr = dead.Recv(context.Background()); rerr != nil {
				break
			}
		}
		if rerr == nil {
			t.Fatal("dead device's connection still open")
		}
		if st := websocket.CloseStatus(rerr); st != -1 {
			t.Fatalf("dead device closed with status %d (%v), want no close frame", st, rerr)
		}

		// The device that answers pings is still served, several pings on.
		time.Sleep(time.Minute)
		if err := alive.Call(context.Background(), &transport.Subscribe{Collection: "c"}, &transport.OK{}); err != nil {
			t.Fatalf("device that answers pings, after %v: %v", time.Since(start), err)
		}
		if n := connections(); n != 1 {
			t.Fatalf("%v connections, want 1", n)
		}
	})
}
