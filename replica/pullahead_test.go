package replica

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
	"github.com/ferrysync/ferry/relay/relaytest"
	"github.com/ferrysync/ferry/transport"
)

// pageCountingStore counts the pages of pulls its relay reads: snapshot
// pages (Records) and log pages (Log), and says so on read.
type pageCountingStore struct {
	relay.Store
	records, logs atomic.Int32
	read          chan struct{} // a page was counted; buffered 1
}

func (s *pageCountingStore) count(n *atomic.Int32) {
	n.Add(1)
	select {
	case s.read <- struct{}{}:
	default: // one waiting already says so
	}
}

func (s *pageCountingStore) Records(ctx context.Context, c relay.Coll, after string, limit int) ([]relay.Record, error) {
	s.count(&s.records)
	return s.Store.Records(ctx, c, after, limit)
}

func (s *pageCountingStore) Log(ctx context.Context, c relay.Coll, after uint64, limit int) ([]relay.LogEntry, error) {
	s.count(&s.logs)
	return s.Store.Log(ctx, c, after, limit)
}

// A pull of several pages asks for the next page before it stores the
// records of the one it has, so that the relay reads it meanwhile: while
// b's listener holds b's first page (after it was stored), the relay
// reads the second, in a fresh pull and in a pull of the log. Every
// record arrives all the same.
func TestPullRequestsNextPageWhileStoring(t *testing.T) {
	const n = 10
	store := &pageCountingStore{Store: memstore.New(), read: make(chan struct{}, 1)}
	rl := relaytest.Start(t, &relaytest.Options{Store: store, Relay: relay.Options{Limits: transport.Limits{MaxBatch: 3}}})
	e := &syncEnv{t: t, rl: rl, srv: rl.Server, store: rl.Store, url: rl.URL, app: rl.App, auth: rl.Auth, token: rl.Token}
	hook := &progressHook{}
	a, b := e.device(nil), e.device(&Options{Listener: hook.listener()})
	ca := a.Collection("c")
	for i := range n {
		if err := ca.Create(fmt.Sprintf("r%02d", i), map[string]any{"n": int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	mustSync(t, a, "p")
	// holdFirstPage has b's listener, at its first page stored, wait for
	// the relay to read one more page (counted by pages) than it had.
	holdFirstPage := func(pages *atomic.Int32) *atomic.Bool {
		before := pages.Load()
		read := &atomic.Bool{}
		hook.once(func(p Progress) bool {
			if p.Direction != FromRelay {
				return false
			}
			timeout := time.NewTimer(10 * time.Second)
			defer timeout.Stop()
		wait:
			for pages.Load() < before+2 {
				select {
				case <-store.read:
				case <-timeout.C:
					break wait
				}
			}
			read.Store(pages.Load() >= before+2)
			return true
		})
		return read
	}
	read := holdFirstPage(&store.records)
	mustSync(t, b, "p")
	if !read.Load() {
		t.Fatal("fresh pull: the relay read no second page while b stored its first")
	}
	for i := range n {
		if err := ca.Update(fmt.Sprintf("r%02d", i), func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, int64(100+i)) }); err != nil {
			t.Fatal(err)
		}
	}
	mustSync(t, a, "p")
	read = holdFirstPage(&store.logs)
	mustSync(t, b, "p")
	if !read.Load() {
		t.Fatal("log pull: the relay read no second page while b stored its first")
	}
	for i := range n {
		if f := getFields(t, b, "c", fmt.Sprintf("r%02d", i)); f["n"] != int64(100+i) {
			t.Fatalf("r%02d on b: %v", i, f)
		}
	}
}
