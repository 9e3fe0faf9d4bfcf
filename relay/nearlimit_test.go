package relay_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/transport"
)

// benchRelay is a relay serving from store, and a push function: through
// its Backend (as /automerge pushes), or, with ws, as a device pushes, on
// /ws over loopback.
func benchRelay(tb testing.TB, store relay.Store, ws bool, tweak func(*relay.Options)) (*relay.Server, func(*transport.Push) error) {
	tb.Helper()
	app := relay.NewApp("shop")
	auth, err := relay.NewAuth([]relay.App{app}, time.Now)
	if err != nil {
		tb.Fatal(err)
	}
	o := &relay.Options{Store: store, Auth: auth, PingInterval: -1, CompactInterval: -1}
	if tweak != nil {
		tweak(o)
	}
	srv, err := relay.NewServer(o)
	if err != nil {
		tb.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
		hs.Close()
		store.Close()
	})
	ctx := context.Background()
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	if !ws {
		return srv, func(p *transport.Push) error {
			_, err := srv.Backend().Push(ctx, coll, p)
			return err
		}
	}
	tok, err := relay.IssueToken(app, relay.TokenRequest{Subject: "bench", TTL: time.Hour, Write: []string{"*"}}, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	conn, err := transport.Dial(ctx, "ws"+strings.TrimPrefix(hs.URL, "http")+"/ws", &transport.Options{PingInterval: -1, Limits: o.Limits})
	if err != nil {
		tb.Fatal(err)
	}
	c := transport.NewClient(conn, nil)
	tb.Cleanup(func() { c.Close() })
	if err := c.Call(ctx, &transport.Hello{APIKey: app.APIKey, Token: tok, ReplicaID: "bench", Versions: transport.SupportedVersions()}, &transport.Welcome{}); err != nil {
		tb.Fatal(err)
	}
	return srv, func(p *transport.Push) error { return c.Call(ctx, p, &transport.Ack{}) }
}

// nearLimitRecord returns an editor whose document saves to within slack
// bytes under maxRecord (a few bytes either way), made by one change of
// incompressible fields, and that change.
func nearLimitRecord(tb testing.TB, maxRecord, slack int) (*editor, []byte) {
	tb.Helper()
	// Noise saves to about three quarters of its bytes.
	fields := (maxRecord - 20_000) / 18_000
	create := func(filler int) (*editor, []byte) {
		rng := rand.New(rand.NewPCG(19, 19))
		ed := newEditor(tb, "f190")
		f := map[string]any{"fill": noise(rng, filler)}
		for i := range fields {
			f[fmt.Sprint("f", i)] = noise(rng, 24_000)
		}
		return ed, compressChange(tb, ed.edit(f))
	}
	lo, hi := 0, 40_000
	for lo < hi {
		k := (lo + hi + 1) / 2
		ed, _ := create(k)
		if len(ed.doc.Save()) <= maxRecord-slack {
			lo = k
		} else {
			hi = k - 1
		}
		ed.doc.Free()
	}
	ed, ch := create(lo)
	// (Fields are written in map order: a few bytes either way.)
	if n := len(ed.doc.Save()); n < maxRecord-slack-32 || n > maxRecord-slack+32 {
		tb.Fatalf("record saves to %d bytes; want about %d", n, maxRecord-slack)
	}
	return ed, ch
}

// BenchmarkPushOneField pushes one-field updates to one record: a small
// record, and one whose saved document is 512 bytes under max_record
// (1 MiB). Each update is acknowledged, or refused with too_large once
// the record is full (then undone on the device, as a device drops an
// edit it cannot sync). A push to the full record should cost about what
// a push to the small one costs: its change is the same size.
func BenchmarkPushOneField(b *testing.B) {
	for _, bc := range []struct {
		name     string
		near, ws bool
	}{{"backend/small", false, false}, {"backend/near-max-record", true, false}, {"ws-badger/small", false, true}, {"ws-badger/near-max-record", true, true}} {
		b.Run(bc.name, func(b *testing.B) {
			var store relay.Store = memstore.New()
			if bc.ws {
				var err error
				if store, err = badgerstore.Open(b.TempDir(), nil); err != nil {
					b.Fatal(err)
				}
			}
			srv, push := benchRelay(b, store, bc.ws, func(o *relay.Options) {
				// The record's first change inflates past max_record.
				o.Limits = transport.DefaultLimits()
				o.Limits.MaxInflated = 4 * o.Limits.MaxRecord
			})
			var ed *editor
			var first []byte
			if bc.near {
				ed, first = nearLimitRecord(b, transport.DefaultMaxRecord, 512)
			} else {
				ed = newEditor(b, "f190")
				first = ed.edit(map[string]any{"title": "small", "n": int64(-1)})
			}
			defer ed.doc.Free()
			if err := push(pushOf("c", 0, rec("r", first))); err != nil {
				b.Fatal(err)
			}
			refused := 0
			saves0 := srv.SizeSaves()
			b.ResetTimer()
			for i := range b.N {
				// Only the push is timed: the device's edit of a large
				// document costs the device.
				b.StopTimer()
				before := ed.doc.Heads()
				ch := ed.edit(map[string]any{"n": int64(i)})
				b.StartTimer()
				err := push(pushOf("c", 0, rec("r", ch)))
				if errors.Is(err, transport.ErrTooLarge) {
					b.StopTimer()
					refused++
					if err := ed.doc.Reset(before); err != nil {
						b.Fatal(err)
					}
					ed.at = before
					b.StartTimer()
					continue
				}
				if err != nil {
					b.Fatalf("update %d: %v", i, err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(refused)/float64(b.N), "refused/op")
			b.ReportMetric(float64(srv.SizeSaves()-saves0)/float64(b.N), "saves/op")
		})
	}
}
