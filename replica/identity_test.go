package replica

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
)

// A record imported whole has exactly the sender's version: nothing of the
// receiver's is added to it.
func TestImportKeepsTheSendersHeads(t *testing.T) {
	src, dst := coll(t, mem(t), "c"), coll(t, mem(t), "c")
	if err := src.Create("a", map[string]any{"v": 1}); err != nil {
		t.Fatal(err)
	}
	changes, heads, _, err := src.pendingChanges("a")
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Import("a", changes); err != nil {
		t.Fatal(err)
	}
	got, err := dst.Heads("a")
	if err != nil || !got.Equal(heads) {
		t.Fatalf("imported heads %v (%v), want the sender's %v", got, err, heads)
	}
}

// copyDir copies a closed store folder, as a device image or a restored
// backup would.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		in, err := os.Open(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.Create(filepath.Join(dst, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
		in.Close()
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// A store copied to a second device, or restored from a backup, writes as
// an actor of its own: the relay never sees two different changes with one
// actor and number, and both copies go on syncing.
func TestCopiedStoreKeepsSyncing(t *testing.T) {
	e := newSyncEnv(t)
	tokens := &Options{TokenSource: StaticToken(e.token)}
	dir := t.TempDir()
	orig := open(t, filepath.Join(dir, "orig"), tokens)
	if err := orig.AddProfile(e.profile("p")); err != nil {
		t.Fatal(err)
	}
	co := coll2(t, orig, "c")
	if err := co.Create("x", map[string]any{"n": 0}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, orig, "p")
	// An unsynced edit, then the copy (a backup taken now).
	co.Update("x", func(d *crdt.Doc) error { return d.Set(crdt.Path{"a"}, 1) })
	if err := orig.Close(); err != nil {
		t.Fatal(err)
	}
	copyDir(t, filepath.Join(dir, "orig"), filepath.Join(dir, "copy"))

	orig = open(t, filepath.Join(dir, "orig"), tokens)
	cp := open(t, filepath.Join(dir, "copy"), tokens)
	if orig.ID() != cp.ID() {
		t.Fatal("a copy has the same replica ID")
	}
	// Both write more to the same record and sync, twice over.
	for round := 0; round < 2; round++ {
		for i, r := range []*Replica{orig, cp} {
			err := coll2(t, r, "c").Update("x", func(d *crdt.Doc) error {
				return d.Set(crdt.Path{"n"}, int64(10*round+i))
			})
			if err != nil {
				t.Fatal(err)
			}
			coll2(t, r, "c").Put("y"+r.actorID()[:4], map[string]any{"round": round})
			mustSync(t, r, "p")
		}
	}
	mustSync(t, orig, "p")
	fo, fc := getFields(t, orig, "c", "x"), getFields(t, cp, "c", "x")
	if !crdt.Equal(fo, fc) || fo["a"] != int64(1) {
		t.Fatalf("copies disagree: %v vs %v", fo, fc)
	}
	for _, r := range []*Replica{orig, cp} {
		if n, _ := coll2(t, r, "c").PendingCount(); n != 0 {
			t.Fatalf("%d records still pending", n)
		}
	}
}

// gatedStore blocks appends while closed, and says when one is waiting.
type gatedStore struct {
	relay.Store
	entered chan struct{}
	open    chan struct{}
}

func (s *gatedStore) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-s.open
	return s.Store.Append(ctx, c, fence, now, entries)
}

// Two profiles of one replica syncing one collection at once do not
// interleave: a refresh from the relay that starts while a two-way sync is
// pushing a new record waits for it, instead of purging the record the
// relay has just acknowledged; afterwards the record is everywhere and
// every sync works.
func TestSyncsOfOneCollectionDoNotInterleave(t *testing.T) {
	e := newSyncEnv(t)
	gate := &gatedStore{Store: memstore.New(), entered: make(chan struct{}, 1), open: make(chan struct{})}
	e.swap(gate)
	r := e.device(nil)
	refresh := e.profile("refresh")
	refresh.Type = policy.RefreshFromServer
	if err := r.AddProfile(refresh); err != nil {
		t.Fatal(err)
	}
	waiting := make(chan string, 4)
	r.colls.mu.Lock()
	r.colls.waiting = func(coll string) { waiting <- coll }
	r.colls.mu.Unlock()

	c := coll2(t, r, "c")
	if err := c.Create("x", map[string]any{"v": 1}); err != nil {
		t.Fatal(err)
	}
	twoWay := make(chan error, 1)
	go func() { _, err := r.Sync(context.Background(), "p"); twoWay <- err }()
	<-gate.entered // the push of x is at the relay's store
	refreshed := make(chan error, 1)
	go func() { _, err := r.Sync(context.Background(), "refresh"); refreshed <- err }()
	select {
	case <-waiting:
	case err := <-refreshed:
		t.Fatalf("the refresh ran while the two-way sync was pushing (err %v)", err)
	}
	close(gate.open)
	if err := <-twoWay; err != nil {
		t.Fatal(err)
	}
	if err := <-refreshed; err != nil {
		t.Fatal(err)
	}
	if f := getFields(t, r, "c", "x"); f["v"] != int64(1) {
		t.Fatalf("x = %v after both syncs", f)
	}
	// Syncing goes on working, and another device gets x.
	c.Put("x", map[string]any{"v": 2})
	mustSync(t, r, "p")
	mustSync(t, r, "refresh")
	other := e.device(nil)
	mustSync(t, other, "p")
	if f := getFields(t, other, "c", "x"); f["v"] != int64(2) {
		t.Fatalf("another device has x = %v", f)
	}
}

// damage overwrites a record's stored snapshot with bytes of the same
// length that do not load, as disk damage would.
func damage(t *testing.T, r *Replica, coll, id string) {
	t.Helper()
	r.cache.drop(cacheKey(coll, id))
	err := r.db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(recKey('s', coll, id))
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		for i := range v {
			v[i] = 0xAA
		}
		return txn.Set(recKey('s', coll, id), v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A damaged record fails alone: a sync pushes and pulls every other
// record, and reports the damaged one as failed with ErrCorrupt.
func TestDamagedRecordFailsAlone(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	for _, id := range []string{"bad", "good"} {
		if err := ca.Create(id, map[string]any{"v": 1}); err != nil {
			t.Fatal(err)
		}
	}
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	// Both change on a; on b, "bad" is damaged and "good" edited.
	for _, id := range []string{"bad", "good"} {
		ca.Put(id, map[string]any{"v": 2})
	}
	mustSync(t, a, "p")
	cb.Put("other", map[string]any{"v": 1})
	damage(t, b, "c", "bad")
	if _, _, err := cb.Export("bad"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("reading the damaged record: %v, want ErrCorrupt", err)
	}
	st, err := b.Sync(context.Background(), "p")
	if !errors.Is(err, ErrSyncFailed) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("sync with a damaged record: %v", err)
	}
	if c := stat(st, "c"); len(c.Failed) != 1 || c.Failed[0].ID != "bad" {
		t.Fatalf("failed records %+v, want bad alone", c.Failed)
	}
	if f := getFields(t, b, "c", "good"); f["v"] != int64(2) {
		t.Fatalf("good on b = %v: the pull stopped at the damaged record", f)
	}
	mustSync(t, a, "p")
	if f := getFields(t, a, "c", "other"); f["v"] != int64(1) {
		t.Fatalf("other on a = %v: the push stopped at the damaged record", f)
	}
}
