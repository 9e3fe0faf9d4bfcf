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

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/storetest"
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
func nearLimitRecord(tb testing.TB, maxRecord, slack int) (*storetest.Editor, []byte) {
	tb.Helper()
	// Noise saves to about three quarters of its bytes.
	fields := (maxRecord - 20_000) / 18_000
	create := func(filler int) (*storetest.Editor, []byte) {
		rng := rand.New(rand.NewPCG(19, 19))
		ed := storetest.NewEditor(tb, "f190")
		f := map[string]any{"fill": noise(rng, filler)}
		for i := range fields {
			f[fmt.Sprint("f", i)] = noise(rng, 24_000)
		}
		return ed, compressChange(tb, ed.Edit(f))
	}
	lo, hi := 0, 40_000
	for lo < hi {
		k := (lo + hi + 1) / 2
		ed, _ := create(k)
		if len(ed.Doc.Save()) <= maxRecord-slack {
			lo = k
		} else {
			hi = k - 1
		}
		ed.Doc.Free()
	}
	ed, ch := create(lo)
	// (Fields are written in map order: a few bytes either way.)
	if n := len(ed.Doc.Save()); n < maxRecord-slack-32 || n > maxRecord-slack+32 {
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
			var ed *storetest.Editor
			var first []byte
			if bc.near {
				ed, first = nearLimitRecord(b, transport.DefaultMaxRecord, 512)
			} else {
				ed = storetest.NewEditor(b, "f190")
				first = ed.Edit(map[string]any{"title": "small", "n": int64(-1)})
			}
			defer ed.Doc.Free()
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
				before := ed.Doc.Heads()
				ch := ed.Edit(map[string]any{"n": int64(i)})
				b.StartTimer()
				err := push(pushOf("c", 0, rec("r", ch)))
				if errors.Is(err, transport.ErrTooLarge) {
					b.StopTimer()
					refused++
					if err := ed.Doc.Reset(before); err != nil {
						b.Fatal(err)
					}
					ed.At = before
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

// TestNearMaxRecordSavesRarely: 200 one-field updates to a record whose
// saved document is 512 bytes under max_record (1 MiB) save it whole to
// check the limit a few times at most, not once a push; the updates are
// acknowledged while they certainly fit and refused with too_large after,
// and the record as stored stays within max_record.
func TestNearMaxRecordSavesRarely(t *testing.T) {
	store := memstore.New()
	srv, push := benchRelay(t, store, false, func(o *relay.Options) {
		o.Limits = transport.DefaultLimits()
		o.Limits.MaxInflated = 4 * o.Limits.MaxRecord
	})
	ed, first := nearLimitRecord(t, transport.DefaultMaxRecord, 512)
	defer ed.Doc.Free()
	if err := push(pushOf("c", 0, rec("r", first))); err != nil {
		t.Fatal(err)
	}
	saves0 := srv.SizeSaves()
	accepted := 0
	for i := range 200 {
		before := ed.Doc.Heads()
		err := push(pushOf("c", 0, rec("r", ed.Edit(map[string]any{"n": int64(i)}))))
		if errors.Is(err, transport.ErrTooLarge) {
			if err := ed.Doc.Reset(before); err != nil {
				t.Fatal(err)
			}
			ed.At = before
			continue
		}
		if err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
		accepted++
	}
	saves := srv.SizeSaves() - saves0
	t.Logf("%d of 200 updates acknowledged, %d saves", accepted, saves)
	if saves > 3 {
		t.Errorf("200 one-field updates saved the record %d times; want 3 at most", saves)
	}
	if accepted == 0 {
		t.Error("no update acknowledged, though the record had room for some")
	}
	held, _, err := relay.Document(context.Background(), store, relay.Coll{Tenant: "shop", Collection: "c"}, "r")
	if err != nil {
		t.Fatal(err)
	}
	d, err := crdt.Load(held, "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	if n := len(d.Save()); n > transport.DefaultMaxRecord {
		t.Fatalf("the record saves to %d bytes, over max_record", n)
	}
}

// TestRecordNeverStoredPastMaxRecord pushes random changes (nested map
// keys, text splices, list inserts, counters, deletes; sometimes
// compressed; from three actors, concurrent or not) to one record under a
// small max_record until it is full, and checks after each push: an
// acknowledged push leaves the stored record within max_record saved; a
// refused one (too_large) would have passed it or come within what the
// relay may refuse early: savedGrowth times less than 1/64 of the record
// (see merged.fits), so above 15/16 of max_record.
func TestRecordNeverStoredPastMaxRecord(t *testing.T) {
	const maxRecord = 8 << 10
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 19))
	store := memstore.New()
	srv, push := benchRelay(t, store, false, func(o *relay.Options) {
		o.Limits = transport.Limits{MaxRecord: maxRecord, MaxFrame: maxRecord + transport.FrameOverhead, MaxInflated: 4 * maxRecord}
	})
	coll := relay.Coll{Tenant: "shop", Collection: "c"}
	held, _ := crdt.New("") // what the relay acknowledged
	defer held.Free()
	actors := make([]*crdt.Doc, 3)
	for i := range actors {
		actors[i], _ = crdt.New(fmt.Sprintf("6b%02x", i))
		defer actors[i].Free()
	}
	var accepted, exact, early, full int
	for round := 0; round < 2000 && full < 40; round++ {
		d := actors[rng.IntN(len(actors))]
		if rng.IntN(3) == 0 {
			all, err := held.ChangesSince(nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := d.Import(all); err != nil {
				t.Fatal(err)
			}
		}
		at := d.Heads()
		// Mostly small changes, as devices make near a full record.
		edits := 1 + rng.IntN(3)
		if rng.IntN(8) == 0 {
			edits = 1 + rng.IntN(40)
		}
		ch := randomChange(t, rng, d, edits)
		if ch == nil {
			continue
		}
		would, err := held.Fork(nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := would.Import(ch); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		size := len(would.Save())
		would.Free()
		err = push(pushOf("c", 0, rec("r", ch)))
		switch {
		case err == nil:
			accepted++
			if _, err := held.Import(ch); err != nil {
				t.Fatal(err)
			}
			stored, _, err := relay.Document(context.Background(), store, coll, "r")
			if err != nil {
				t.Fatal(err)
			}
			s, err := crdt.Load(stored, "")
			if err != nil {
				t.Fatal(err)
			}
			n := len(s.Save())
			s.Free()
			if n > maxRecord {
				t.Fatalf("round %d: a push of %d bytes was acknowledged; the record now saves to %d bytes, over max_record %d", round, len(ch), n, maxRecord)
			}
		case errors.Is(err, transport.ErrTooLarge):
			full++
			if size > maxRecord {
				exact++
			} else if size <= maxRecord-maxRecord/16 {
				t.Fatalf("round %d: a push of %d bytes was refused (%v), though the record would save to %d bytes, well within max_record %d", round, len(ch), err, size, maxRecord)
			} else {
				early++
			}
			// The device drops what the relay will never take.
			if err := d.Reset(at); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("round %d: %v", round, err)
		}
	}
	t.Logf("%d pushes acknowledged (record at %d bytes saved), %d refused: %d past max_record, %d early; %d saves", accepted, len(held.Save()), full, exact, early, srv.SizeSaves())
	if full == 0 {
		t.Fatal("the record never filled up")
	}
}
