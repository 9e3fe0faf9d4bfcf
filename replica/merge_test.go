package replica

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
)

// TestConflictOverSeveralEntriesOfOnePull has the relay hold two entries
// for a record (two syncs of a) that b pulls in one page while it edited
// the same field: the first entry conflicts, the second builds on it and
// joins it, and the resolution covers both, by each policy.
func TestConflictOverSeveralEntriesOfOnePull(t *testing.T) {
	for _, tc := range []struct {
		pol       policy.Policy
		wantPrice int64
	}{
		{policy.PreferLocal, 15},
		{policy.PreferCloud, 13},
	} {
		t.Run(string(tc.pol), func(t *testing.T) {
			e := newSyncEnv(t)
			a, b := e.device(nil), e.device(nil)
			setProfilePolicy(t, a, tc.pol)
			setProfilePolicy(t, b, tc.pol)
			ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
			if err := ca.Create("tea", map[string]any{"price": 10, "qty": 1}); err != nil {
				t.Fatal(err)
			}
			mustSync(t, a, "p")
			mustSync(t, b, "p")
			set := func(c *Collection, field string, v any) {
				t.Helper()
				if err := c.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{field}, v) }); err != nil {
					t.Fatal(err)
				}
			}
			set(ca, "price", 12)
			mustSync(t, a, "p")
			set(ca, "price", 13)
			set(ca, "qty", 3)
			mustSync(t, a, "p")
			set(cb, "price", 15)
			set(cb, "note", "b")
			st := mustSync(t, b, "p")
			if c := stat(st, "c"); c.Conflicts != 1 || len(c.Failed) != 0 {
				t.Fatalf("b's sync: %d conflicts, failed %v; want 1 and none", c.Conflicts, c.Failed)
			}
			mustSync(t, a, "p")
			for _, r := range []*Replica{a, b} {
				f := getFields(t, r, "c", "tea")
				if f["price"] != tc.wantPrice || f["qty"] != int64(3) || f["note"] != "b" {
					t.Fatalf("%s has %v: want price %d, a's qty 3 and b's note", r.ID()[:6], f, tc.wantPrice)
				}
			}
			ha, _ := ca.Heads("tea")
			hb, _ := cb.Heads("tea")
			if !ha.Equal(hb) {
				t.Fatalf("heads differ: %v and %v", ha, hb)
			}
			if n, _ := cb.PendingCount(); n != 0 {
				t.Fatalf("b has %d pending after its sync", n)
			}
		})
	}
}

// TestEntriesOfARecordInSeveralWindows has b pull, in one page, two
// entries for each of two records it edited, the second entries more than
// a window of prepared merges (prepWindow) after the first: one record's
// first entry conflicts and waits for the policy, so its second is joined
// to it rather than merged on its own; the other's first entry merges
// cleanly and its second is merged against it. Each policy's values win,
// with one core and with two.
func TestEntriesOfARecordInSeveralWindows(t *testing.T) {
	for _, tc := range []struct {
		pol                policy.Policy
		wantTea, wantCocoa int64
	}{
		{policy.PreferLocal, 15, 25},
		{policy.PreferCloud, 13, 23},
	} {
		for _, procs := range []int{1, 2} {
			t.Run(fmt.Sprintf("%s/procs=%d", tc.pol, procs), func(t *testing.T) {
				defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
				e := newSyncEnv(t)
				a, b := e.device(nil), e.device(nil)
				setProfilePolicy(t, a, tc.pol)
				setProfilePolicy(t, b, tc.pol)
				ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
				// "a-..." sort first: a pushes them before the others.
				err := a.Write(func(tx *Tx) error {
					for _, id := range []string{"a-cocoa", "a-tea"} {
						if err := tx.Create("c", id, map[string]any{"price": 10, "qty": 1}); err != nil {
							return err
						}
					}
					for i := range prepWindow + 8 {
						if err := tx.Create("c", fmt.Sprintf("r%02d", i), map[string]any{"qty": 0}); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				mustSync(t, a, "p")
				mustSync(t, b, "p")
				// a's first push: both records, then every r.., in one
				// page's first window; its second: both records again.
				setField(t, ca, "a-tea", "price", 12)
				setField(t, ca, "a-cocoa", "qty", 2)
				for i := range prepWindow + 8 {
					setField(t, ca, fmt.Sprintf("r%02d", i), "qty", i+1)
				}
				mustSync(t, a, "p")
				setField(t, ca, "a-tea", "price", 13)
				setField(t, ca, "a-cocoa", "price", 23)
				mustSync(t, a, "p")
				setField(t, cb, "a-tea", "price", 15)
				setField(t, cb, "a-cocoa", "price", 25)
				st := mustSync(t, b, "p")
				if c := stat(st, "c"); c.Conflicts != 2 || len(c.Failed) != 0 {
					t.Fatalf("b's sync: %d conflicts, failed %v; want 2 and none", c.Conflicts, c.Failed)
				}
				mustSync(t, a, "p")
				for _, r := range []*Replica{a, b} {
					tea, cocoa := getFields(t, r, "c", "a-tea"), getFields(t, r, "c", "a-cocoa")
					if tea["price"] != tc.wantTea || cocoa["price"] != tc.wantCocoa || cocoa["qty"] != int64(2) {
						t.Fatalf("%s has tea %v, cocoa %v: want prices %d and %d, cocoa's qty 2", r.ID()[:6], tea, cocoa, tc.wantTea, tc.wantCocoa)
					}
					if f := getFields(t, r, "c", "r07"); f["qty"] != int64(8) {
						t.Fatalf("%s has r07 %v", r.ID()[:6], f)
					}
				}
				for _, id := range []string{"a-cocoa", "a-tea"} {
					ha, _ := ca.Heads(id)
					hb, _ := cb.Heads(id)
					if !ha.Equal(hb) {
						t.Fatalf("%s: heads differ", id)
					}
				}
			})
		}
	}
}

// TestExtends checks the test threeWay uses to fork the relay's version
// instead of importing the incoming changes again: it holds only when
// the base plus the changes is exactly the relay's version.
func TestExtends(t *testing.T) {
	edit := func(d *crdt.Doc, v int) {
		t.Helper()
		if err := d.Set(crdt.Path{"qty"}, v); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Commit("", time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	a, err := crdt.New("aaaa")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Free()
	edit(a, 1)
	base := a.Heads()
	edit(a, 2)
	edit(a, 3)
	// extends takes the change chunks of the incoming bytes, as their
	// import lists them.
	parsed := func(b []byte) []crdt.ChangeInfo {
		chs, _ := crdt.ParseChanges(b)
		return chs
	}
	incoming, err := a.ChangesSince(base)
	if err != nil {
		t.Fatal(err)
	}
	relay := a.Heads()
	if !extends(base, parsed(incoming), relay) {
		t.Fatal("base plus the changes since it: want true")
	}
	// A concurrent change the incoming bytes do not carry.
	b, err := a.Fork(base)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()
	if err := b.SetActor("bbbb"); err != nil {
		t.Fatal(err)
	}
	edit(b, 4)
	if _, err := a.Import(mustChanges(t, b, base)); err != nil {
		t.Fatal(err)
	}
	if extends(base, parsed(incoming), a.Heads()) {
		t.Fatal("the relay holds a change incoming lacks: want false")
	}
	// Without the base the import would fail for missing dependencies,
	// and threeWay forks the relay's version then too.
	if !extends(nil, parsed(incoming), relay) {
		t.Fatal("empty base, incoming needing the base: want true")
	}
	// A whole document lists no changes: never taken for them.
	if extends(nil, parsed(a.Save()), a.Heads()) {
		t.Fatal("a saved document: want false")
	}
	if extends(base, parsed([]byte("not automerge")), relay) {
		t.Fatal("bad bytes: want false")
	}
}

func mustChanges(t *testing.T, d *crdt.Doc, since crdt.Heads) []byte {
	t.Helper()
	b, err := d.ChangesSince(since)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMergeOfHeldChanges applies an entry whose changes the record holds
// already (a device's own changes coming back from the relay): nothing
// changes but the synced heads, and bytes that are not Automerge's are
// still refused.
func TestMergeOfHeldChanges(t *testing.T) {
	r := open(t, "", &Options{InMemory: true})
	c := r.Collection("c")
	if err := c.Create("tea", map[string]any{"qty": 1}); err != nil {
		t.Fatal(err)
	}
	if err := c.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"qty"}, 2) }); err != nil {
		t.Fatal(err)
	}
	heads, err := c.Heads("tea")
	if err != nil {
		t.Fatal(err)
	}
	var changes []byte
	if err := c.read("tea", func(d *crdt.Doc, _ meta) (err error) { changes, err = d.ChangesSince(nil); return err }); err != nil {
		t.Fatal(err)
	}
	if _, err := r.applyBatch("c", []remoteRec{{id: "tea", data: []byte("not automerge"), relay: heads}}, r.mergeOp); !errors.Is(err, crdt.ErrCorrupt) {
		t.Fatalf("bad bytes: %v, want ErrCorrupt", err)
	}
	res, err := r.applyBatch("c", []remoteRec{{id: "tea", data: changes, relay: heads}}, r.mergeOp)
	if err != nil || len(res.events) != 0 || len(res.conflicted) != 0 {
		t.Fatalf("held changes: %+v, %v; want no event", res, err)
	}
	if n, _ := c.PendingCount(); n != 0 {
		t.Fatalf("%d pending once the relay holds its heads, want 0", n)
	}
	var acked crdt.Heads
	if err := r.db.View(func(txn *badger.Txn) (err error) { acked, err = readAcked(txn, "c", "tea"); return err }); err != nil || !acked.Equal(heads) {
		t.Fatalf("synced heads %v (%v), want %v", acked, err, heads)
	}
	if h, _ := c.Heads("tea"); !h.Equal(heads) {
		t.Fatalf("heads moved: %v", h)
	}
}

// TestMergeManyRecordsAtOnce has a sync merge more records than a batch
// prepares at once (prepareMerges), some pending with conflicts, some
// pending without, some not pending, with one core and with two: the
// results are the policy's either way.
func TestMergeManyRecordsAtOnce(t *testing.T) {
	const n = prepWindow + 9
	for _, procs := range []int{1, 2} {
		t.Run(fmt.Sprintf("procs=%d", procs), func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			e := newSyncEnv(t)
			a, b := e.device(nil), e.device(nil)
			ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
			err := a.Write(func(tx *Tx) error {
				for i := range n {
					if err := tx.Create("c", fmt.Sprintf("r%02d", i), map[string]any{"price": 1, "qty": 0}); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			mustSync(t, a, "p")
			mustSync(t, b, "p")
			for i := range n {
				id := fmt.Sprintf("r%02d", i)
				if i%3 != 2 {
					setField(t, ca, id, "price", 100+i)
					setField(t, ca, id, "qty", i)
				}
				switch i % 3 {
				case 0:
					setField(t, cb, id, "price", 200+i) // conflicts with a's price
				case 1:
					setField(t, cb, id, "note", "b") // pending on b, no conflict
				}
			}
			mustSync(t, a, "p")
			st := mustSync(t, b, "p")
			if c := stat(st, "c"); c.Conflicts != (n+2)/3 || len(c.Failed) != 0 {
				t.Fatalf("b resolved %d conflicts (failed %v), want %d", c.Conflicts, c.Failed, (n+2)/3)
			}
			mustSync(t, a, "p")
			for i := range n {
				id := fmt.Sprintf("r%02d", i)
				want := map[string]any{"price": int64(100 + i), "qty": int64(i)}
				switch i % 3 {
				case 0:
					want["price"] = int64(200 + i)
				case 1:
					want["note"] = "b"
				case 2:
					want = map[string]any{"price": int64(1), "qty": int64(0)}
				}
				for _, r := range []*Replica{a, b} {
					got := getFields(t, r, "c", id)
					if len(got) != len(want) {
						t.Fatalf("%s on %s: %v, want %v", id, r.ID()[:6], got, want)
					}
					for k, v := range want {
						if got[k] != v {
							t.Fatalf("%s on %s: %v, want %v", id, r.ID()[:6], got, want)
						}
					}
				}
				ha, _ := ca.Heads(id)
				hb, _ := cb.Heads(id)
				if !ha.Equal(hb) {
					t.Fatalf("%s: heads differ", id)
				}
			}
		})
	}
}

// A pull's batch whose transaction fails while merges of later records
// still run waits for them before it ends: the batch drops the documents
// it touched as it ends, and a merge still running would write into a
// freed one. Here the first record's pulled bytes are not Automerge's, so
// its merge fails the batch, while the merges of the others are held.
func TestFailedBatchWaitsForItsMerges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2)) // merges run only with a second core
		r := mem(t)
		c := r.Collection("c")
		var recs []remoteRec
		for i := range 6 {
			id := fmt.Sprint("r", i)
			if err := c.Create(id, map[string]any{"n": int64(i)}); err != nil {
				t.Fatal(err)
			}
			recs = append(recs, remoteRec{id: id, data: []byte("not automerge"), relay: crdt.Heads{crdt.Hash{byte(i + 1)}}})
		}
		release := make(chan struct{})
		var held atomic.Int32
		mergeStarting = func(id string) {
			if id != "r0" {
				held.Add(1)
				<-release
			}
		}
		defer func() { mergeStarting = nil }()
		done := make(chan error, 1)
		go func() {
			res, err := r.applyHolding("c", recs, r.mergeOp, true, nil)
			freeMerged(res.conflicted)
			done <- err
		}()
		synctest.Wait()
		if held.Load() == 0 {
			t.Fatal("no merge was held: the batch merged nothing ahead")
		}
		select {
		case err := <-done:
			close(release)
			t.Fatalf("the batch ended (%v) with merges of its records still running", err)
		default:
		}
		close(release)
		if err := <-done; !errors.Is(err, crdt.ErrCorrupt) {
			t.Fatalf("the batch's error is %v, want the bad record's ErrCorrupt", err)
		}
		// The records are as they were, and load.
		for i := range 6 {
			var got map[string]any
			if err := c.Get(fmt.Sprint("r", i), &got); err != nil || got["n"] != int64(i) {
				t.Fatalf("r%d after the failed batch: %v, %v", i, got, err)
			}
		}
	})
}
