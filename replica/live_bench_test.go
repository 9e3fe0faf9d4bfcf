package replica

// Benchmarks of the live path, on disk and durable (the default):
//
//	go test -run='^$' -bench=Live -benchtime=2s ./replica/

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/relay/memstore"
)

// liveSource makes the changes a relay would send a device: n records,
// each edited in turn.
type liveSource struct {
	docs  []*crdt.Doc
	heads []crdt.Heads
	n     int
}

func newLiveSource(tb testing.TB, n int) (*liveSource, []remoteRec) {
	tb.Helper()
	s := &liveSource{}
	var first []remoteRec
	for i := range n {
		d, err := crdt.New(fmt.Sprintf("%032x", i+1))
		if err != nil {
			tb.Fatal(err)
		}
		if err := d.Put(map[string]any{"name": fmt.Sprintf("product-%08d", i), "qty": int64(0), "tags": []any{"tea", "green"}}); err != nil {
			tb.Fatal(err)
		}
		if _, err := d.Commit("", time.UnixMilli(1_700_000_000_000)); err != nil {
			tb.Fatal(err)
		}
		data, err := d.ChangesSince(nil)
		if err != nil {
			tb.Fatal(err)
		}
		s.docs, s.heads = append(s.docs, d), append(s.heads, d.Heads())
		first = append(first, remoteRec{id: fmt.Sprintf("r%04d", i), data: data, relay: d.Heads()})
	}
	return s, first
}

// next edits the next record and returns the change as the relay sends it.
func (s *liveSource) next(tb testing.TB) remoteRec {
	tb.Helper()
	i := s.n % len(s.docs)
	s.n++
	d := s.docs[i]
	if err := d.Set(crdt.Path{"qty"}, int64(s.n)); err != nil {
		tb.Fatal(err)
	}
	if _, err := d.Commit("", time.UnixMilli(1_700_000_000_000+int64(s.n))); err != nil {
		tb.Fatal(err)
	}
	data, err := d.ChangesSince(s.heads[i])
	if err != nil {
		tb.Fatal(err)
	}
	s.heads[i] = d.Heads()
	return remoteRec{id: fmt.Sprintf("r%04d", i), data: data, relay: s.heads[i]}
}

// BenchmarkLiveApply applies live messages of one record's change each, as
// a device in live mode does: the record and the profile's cursor. 100
// records are edited in turn, so each gains a chunk per message and is
// compacted every Options.CompactAfter.
func BenchmarkLiveApply(b *testing.B) {
	r := open(b, b.TempDir(), nil)
	p := &Profile{Name: "p"}
	ctx := context.Background()
	src, first := newLiveSource(b, 100)
	if _, err := r.applyLiveLocked(ctx, p, nil, "c", first, 1); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	cursor := uint64(1)
	for b.Loop() {
		b.StopTimer()
		rec := src.next(b)
		cursor++
		b.StartTimer()
		if conflict, err := r.applyLiveLocked(ctx, p, nil, "c", []remoteRec{rec}, cursor); err != nil || conflict {
			b.Fatal(conflict, err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "messages/s")
}

// benchRelay starts a relay on loopback with an in-memory store and
// returns a live two-way profile for it, and replica options with its
// token.
func benchRelay(tb testing.TB) (Profile, *Options) {
	tb.Helper()
	return benchRelayOn(tb, memstore.New())
}

// durableRelay is benchRelay on a Badger store on disk that fsyncs each
// append before acknowledging it, as `ferry relay` runs.
func durableRelay(tb testing.TB) (Profile, *Options) {
	tb.Helper()
	store, err := badgerstore.Open(tb.TempDir(), &badgerstore.Options{GCInterval: -1})
	if err != nil {
		tb.Fatal(err)
	}
	return benchRelayOn(tb, store)
}

// waitFor reads f until an event for id with heads arrives.
func waitFor(tb testing.TB, f *Feed, id string, heads crdt.Heads) {
	tb.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev, ok := <-f.C:
			if !ok {
				tb.Fatalf("feed closed: %v", f.Err())
			}
			if ev.ID == id && ev.Heads.Equal(heads) {
				return
			}
		case <-timeout:
			tb.Fatalf("no event for %s at %v", id, heads)
		}
	}
}

// BenchmarkLiveRoundTrip edits a record on one device and waits until
// another, both live through a relay on loopback, has applied the edit:
// device A's durable commit, its push and the acknowledgement's
// bookkeeping, the relay's durable append (a Badger store on disk), device
// B's apply and cursor (not fsynced: the relay can send them again). Two
// fsyncs in all. One edit at a time, so the figure is the latency of one
// edit reaching another device.
func BenchmarkLiveRoundTrip(b *testing.B) {
	p, o := durableRelay(b)
	devA, devB := open(b, b.TempDir(), o), open(b, b.TempDir(), o)
	feedB := (&Collection{r: devB, name: "c"}).Watch(1 << 16)
	defer feedB.Close()
	for _, r := range []*Replica{devA, devB} {
		if err := r.AddProfile(p); err != nil {
			b.Fatal(err)
		}
	}
	a := &Collection{r: devA, name: "c"}
	const n = 100
	for i := range n {
		if err := a.Create(fmt.Sprintf("r%04d", i), map[string]any{"name": fmt.Sprintf("product-%08d", i), "qty": int64(0)}); err != nil {
			b.Fatal(err)
		}
	}
	heads := func(id string) crdt.Heads {
		h, err := a.Heads(id)
		if err != nil {
			b.Fatal(err)
		}
		return h
	}
	waitFor(b, feedB, fmt.Sprintf("r%04d", n-1), heads(fmt.Sprintf("r%04d", n-1)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		id := fmt.Sprintf("r%04d", i%n)
		i++
		qty := int64(i)
		if err := a.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, qty) }); err != nil {
			b.Fatal(err)
		}
		waitFor(b, feedB, id, heads(id))
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "edits/s")
}
