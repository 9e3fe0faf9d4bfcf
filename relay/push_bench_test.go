package relay_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
	"github.com/ferrysync/ferry/transport"
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
	changes := creationChanges(b)
	srv, _ := benchRelay(b, memstore.New(), false, nil)
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	ctx := context.Background()
	runPushers(b, clients, func(_ int, i int64) error {
		p := pushOf("c", 0, rec(fmt.Sprintf("r%09d", i), changes[i%int64(len(changes))]))
		_, err := srv.Backend().Push(ctx, coll, p)
		return err
	}, nil)
}

// creationChanges returns 256 creation changes of 5-field records, each
// by an actor of its own, for benchmarks to push as new records.
func creationChanges(b *testing.B) [][]byte {
	changes := make([][]byte, 256)
	for i := range changes {
		ed := storetest.NewEditor(b, fmt.Sprintf("%032x", i+1))
		changes[i] = ed.Edit(map[string]any{"name": fmt.Sprint("item ", i), "price": 1.5 * float64(i), "qty": int64(i), "cat": "c", "sku": fmt.Sprint("s", i)})
		ed.Doc.Free()
	}
	return changes
}

// runPushers times b.N calls of push, made by clients goroutines (w, 0
// to clients-1) at once, each call taking the next index i, then waits for settled (if not nil)
// before the clock stops, and reports the process's CPU per push.
func runPushers(b *testing.B, clients int, push func(w int, i int64) error, settled func()) {
	var next atomic.Int64
	b.ReportAllocs()
	cpu0 := processCPU(b)
	b.ResetTimer()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for w := range clients {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				if err := push(w, i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	if settled != nil {
		settled()
	}
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

// BenchmarkPushOverSockets is W4 in one process, over WebSockets on
// loopback: 16 clients push creation changes, one new record per push,
// each awaiting its ack, while 8 subscribers of the collection receive
// them, to a memory store (no fsync). Beside BenchmarkPushNewRecords'
// work it measures what carrying each push costs: reading it, writing
// its ack, and the live messages fanned out per group. cpu-ns/op is the
// process's CPU per push, the clients' included; the figure to compare.
func BenchmarkPushOverSockets(b *testing.B) {
	const clients, subscribers = 16, 8
	changes := creationChanges(b)
	app := relay.NewApp("shop")
	auth, err := relay.NewAuth([]relay.App{app}, time.Now)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := relay.NewServer(&relay.Options{Store: memstore.New(), Auth: auth, PingInterval: -1, CompactInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
		hs.Close()
	}()
	ctx := context.Background()
	tok, err := relay.IssueToken(app, relay.TokenRequest{Subject: "bench", TTL: time.Hour, Write: []string{"*"}}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	dial := func(name string) *transport.Client {
		conn, err := transport.Dial(ctx, "ws"+strings.TrimPrefix(hs.URL, "http")+"/ws", &transport.Options{PingInterval: -1})
		if err != nil {
			b.Fatal(err)
		}
		c := transport.NewClient(conn, &transport.ClientOptions{LiveBuffer: 4096})
		if err := c.Call(ctx, &transport.Hello{APIKey: app.APIKey, Token: tok, ReplicaID: name, Versions: transport.SupportedVersions()}, &transport.Welcome{}); err != nil {
			b.Fatal(err)
		}
		return c
	}
	// allIn is done once every subscriber has every change.
	var allIn, subs sync.WaitGroup
	allIn.Add(subscribers)
	for i := range subscribers {
		c := dial(fmt.Sprint("sub-", i))
		defer c.Close()
		if err := c.Call(ctx, &transport.Subscribe{Collection: "c"}, &transport.OK{}); err != nil {
			b.Fatal(err)
		}
		subs.Go(func() {
			n := 0
			for lv := range c.Live() {
				if n < b.N && n+len(lv.Records) >= b.N {
					allIn.Done()
				}
				n += len(lv.Records)
			}
		})
	}
	pushers := make([]*transport.Client, clients)
	for i := range pushers {
		pushers[i] = dial(fmt.Sprint("pusher-", i))
		defer pushers[i].Close()
	}
	runPushers(b, clients, func(w int, i int64) error {
		p := pushOf("c", 0, rec(fmt.Sprintf("r%09d", i), changes[i%int64(len(changes))]))
		return pushers[w].Call(ctx, p, &transport.Ack{})
	}, allIn.Wait) // every subscriber has every change: the fan-out is part of what a push costs
}
