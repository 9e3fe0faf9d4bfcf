package replica

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/memstore"
)

// syncWithin runs a sync and fails the test if it has not returned by d: a
// hang here is a deadlock, which would otherwise stall the whole run.
func syncWithin(t *testing.T, r *Replica, profile string, d time.Duration) (*SyncStats, error) {
	t.Helper()
	type out struct {
		st  *SyncStats
		err error
	}
	ch := make(chan out, 1)
	go func() {
		st, err := r.Sync(context.Background(), profile)
		ch <- out{st, err}
	}()
	select {
	case o := <-ch:
		return o.st, o.err
	case <-time.After(d):
		t.Fatalf("sync of %s did not return within %s: deadlocked", profile, d)
		return nil, nil
	}
}

// A merge hook is app code that does what app code does: it reads its own
// record and others, and writes elsewhere. It runs with no lock held, so
// none of that deadlocks, and the replica still closes.
func TestMergeHookMayReadAndWriteTheReplica(t *testing.T) {
	e := newSyncEnv(t)
	var b *Replica
	var calls atomic.Int32
	hook := policy.ResolverFunc(func(c *policy.Conflict) (policy.Decision, error) {
		calls.Add(1)
		col := coll2(t, b, c.Collection)
		var cur map[string]any
		if err := col.Get(c.Record, &cur); err != nil {
			return policy.Decision{}, err
		}
		if _, err := collect(col.Scan(ScanOptions{})); err != nil {
			return policy.Decision{}, err
		}
		if err := coll2(t, b, "audit").Put(c.Record, map[string]any{"saw": cur["price"]}); err != nil {
			return policy.Decision{}, err
		}
		return policy.Keep(c.Local), nil
	})
	a := e.device(nil)
	b = e.device(&Options{MergeHook: hook})
	setProfilePolicy(t, b, policy.Custom)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	if err := ca.Create("tea", map[string]any{"price": 10}); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	ca.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 12) })
	cb.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 15) })
	mustSync(t, a, "p")
	if _, err := syncWithin(t, b, "p", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 1 {
		t.Fatalf("hook called %d times, want 1", calls.Load())
	}
	if f := getFields(t, b, "c", "tea"); f["price"] != int64(15) {
		t.Fatalf("b has %v, want its own price kept", f)
	}
	if f := getFields(t, b, "audit", "tea"); f["saw"] != int64(15) {
		t.Fatalf("the hook read %v, want b's price as it stood", f)
	}
	closeOrFail(t, b, 10*time.Second)
}

// A hook that edits the very record it decides makes the decision stale:
// the record is compared again, the hook asked again, and nothing is lost.
func TestMergeHookEditingItsRecordIsDecidedAgain(t *testing.T) {
	e := newSyncEnv(t)
	var b *Replica
	var calls atomic.Int32
	hook := policy.ResolverFunc(func(c *policy.Conflict) (policy.Decision, error) {
		if calls.Add(1) == 1 {
			err := coll2(t, b, c.Collection).Update(c.Record, func(d *crdt.Doc) error {
				return d.Set(crdt.Path{"note"}, "edited during the hook")
			})
			if err != nil {
				return policy.Decision{}, err
			}
		}
		return policy.Keep(int64(99)), nil
	})
	a := e.device(nil)
	b = e.device(&Options{MergeHook: hook})
	setProfilePolicy(t, b, policy.Custom)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	ca.Create("tea", map[string]any{"price": 10})
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	ca.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 12) })
	cb.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 15) })
	mustSync(t, a, "p")
	if _, err := syncWithin(t, b, "p", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("hook called %d times, want 2 (once more after the record changed)", n)
	}
	mustSync(t, a, "p")
	for _, r := range []*Replica{a, b} {
		f := getFields(t, r, "c", "tea")
		if f["price"] != int64(99) || f["note"] != "edited during the hook" {
			t.Fatalf("%s has %v", r.ID()[:6], f)
		}
	}
}

// A failing hook is reported where the caller looks: the error of Sync and
// the record's entry in the statistics both wrap ErrMergeHook.
func TestMergeHookErrorReachesTheCaller(t *testing.T) {
	e := newSyncEnv(t)
	boom := errors.New("boom")
	hook := policy.ResolverFunc(func(*policy.Conflict) (policy.Decision, error) { return policy.Decision{}, boom })
	a := e.device(nil)
	b := e.device(&Options{MergeHook: hook})
	setProfilePolicy(t, b, policy.Custom)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	ca.Create("tea", map[string]any{"price": 10})
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	ca.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 12) })
	cb.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 15) })
	mustSync(t, a, "p")
	st, err := b.Sync(context.Background(), "p")
	if !errors.Is(err, ErrSyncFailed) || !errors.Is(err, ErrMergeHook) || !errors.Is(err, boom) {
		t.Fatalf("Sync = %v, want ErrSyncFailed wrapping ErrMergeHook and the hook's error", err)
	}
	c := stat(st, "c")
	if len(c.Failed) != 1 || c.Failed[0].ID != "tea" || !errors.Is(c.Failed[0].Err(), ErrMergeHook) || c.Failed[0].Reason == "" {
		t.Fatalf("failed records %+v", c.Failed)
	}
	last, err := b.LastSync("p")
	if err != nil || len(last.Collections[0].Failed) != 1 || last.Collections[0].Failed[0].Reason != c.Failed[0].Reason {
		t.Fatalf("LastSync keeps %+v, %v", last, err)
	}
}

// A field one side deleted and the other edited is a conflict; whichever
// side wins, a collaborative text stays text and a counter stays a
// counter, on every replica, and the hook sees the kinds.
func TestResolutionsKeepTextAndCounterKinds(t *testing.T) {
	for _, pol := range []policy.Policy{policy.PreferLocal, policy.Custom} {
		t.Run(string(pol), func(t *testing.T) {
			e := newSyncEnv(t)
			var mu sync.Mutex
			seen := map[string]any{}
			hook := policy.ResolverFunc(func(c *policy.Conflict) (policy.Decision, error) {
				mu.Lock()
				seen[c.Path.String()] = c.Local
				mu.Unlock()
				return policy.Keep(c.Local), nil
			})
			a, b := e.device(nil), e.device(&Options{MergeHook: hook})
			setProfilePolicy(t, b, pol)
			ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
			if err := ca.Create("x", map[string]any{"notes": crdt.Text("hello"), "stock": crdt.Counter(5)}); err != nil {
				t.Fatal(err)
			}
			mustSync(t, a, "p")
			mustSync(t, b, "p")
			// a deletes both fields; b edits them.
			ca.Update("x", func(d *crdt.Doc) error { d.Delete(crdt.Path{"notes"}); return d.Delete(crdt.Path{"stock"}) })
			cb.Update("x", func(d *crdt.Doc) error {
				if err := d.SpliceText(crdt.Path{"notes"}, 5, 0, " world"); err != nil {
					return err
				}
				return d.Increment(crdt.Path{"stock"}, 2)
			})
			mustSync(t, a, "p")
			mustSync(t, b, "p")
			mustSync(t, a, "p")
			if pol == policy.Custom {
				if _, ok := seen["notes"].(crdt.Text); !ok {
					t.Errorf("hook saw notes as %T, want crdt.Text", seen["notes"])
				}
				if _, ok := seen["stock"].(crdt.Counter); !ok {
					t.Errorf("hook saw stock as %T, want crdt.Counter", seen["stock"])
				}
			}
			for _, r := range []*Replica{a, b} {
				c := coll2(t, r, "c")
				err := c.Update("x", func(d *crdt.Doc) error {
					if v, _, err := d.GetTyped(crdt.Path{"notes"}); err != nil || v != crdt.Text("hello world") {
						t.Errorf("%s: notes = %#v %v, want crdt.Text", r.ID()[:6], v, err)
					}
					if v, _, err := d.GetTyped(crdt.Path{"stock"}); err != nil || v != crdt.Counter(7) {
						t.Errorf("%s: stock = %#v %v, want crdt.Counter(7)", r.ID()[:6], v, err)
					}
					// And they stay collaborative.
					if err := d.SpliceText(crdt.Path{"notes"}, 0, 0, ">"); err != nil {
						return err
					}
					return d.Increment(crdt.Path{"stock"}, 1)
				})
				if err != nil {
					t.Fatalf("%s: editing the resolved fields: %v", r.ID()[:6], err)
				}
			}
		})
	}
}

// Refresh from the device rewrites the relay's record as the device has
// it, collaborative kinds included.
func TestRefreshFromClientKeepsKinds(t *testing.T) {
	e := newSyncEnv(t)
	a, b := e.device(nil), e.device(nil)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	ca.Create("x", map[string]any{"notes": crdt.Text("mine")})
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	cb.Update("x", func(d *crdt.Doc) error { return d.Delete(crdt.Path{"notes"}) })
	mustSync(t, b, "p")
	p, _ := a.Profile("p")
	p.Type = policy.RefreshFromClient
	a.UpdateProfile(p)
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	err := cb.Update("x", func(d *crdt.Doc) error { return d.SpliceText(crdt.Path{"notes"}, 4, 0, "!") })
	if err != nil {
		t.Fatalf("notes on b after the refresh: %v", err)
	}
}

// appendLog is a relay store that records the fence of every append that
// carries a record, and can refuse leased appends.
type appendLog struct {
	relay.Store
	mu          sync.Mutex
	fences      map[string][]uint64 // record -> fences of its appends
	refuseFence bool
}

func (s *appendLog) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	s.mu.Lock()
	refuse := s.refuseFence && fence != 0
	if refuse {
		s.refuseFence = false
	}
	s.mu.Unlock()
	if refuse {
		return 0, relay.ErrStaleFence
	}
	seq, err := s.Store.Append(ctx, c, fence, now, entries)
	if err == nil {
		s.mu.Lock()
		for _, e := range entries {
			s.fences[e.Record] = append(s.fences[e.Record], fence)
		}
		s.mu.Unlock()
	}
	return seq, err
}

// A conflict resolution is pushed only under a lease, in every mode: when
// the leased push of a resolution fails, the record is not pushed later
// without a fence by a push that holds no lease. The same holds for a
// resolution a built-in policy decides in the merge's own transaction.
func TestResolutionIsNeverPushedWithoutALease(t *testing.T) {
	// The hook decides a value neither side wrote, so the resolution is a
	// change of its own, whichever side Automerge's merge shows.
	hook := policy.ResolverFunc(func(*policy.Conflict) (policy.Decision, error) { return policy.Keep(int64(99)), nil })
	t.Run("custom", func(t *testing.T) {
		resolutionNeverPushedWithoutALease(t, policy.Custom, hook, func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 15) }, int64(99))
	})
	// b deletes the field a sets: Automerge's merge shows a's value (a set
	// wins over a concurrent delete), so prefer-local's delete is a change.
	t.Run("prefer-local", func(t *testing.T) {
		resolutionNeverPushedWithoutALease(t, policy.PreferLocal, nil, func(d *crdt.Doc) error { return d.Delete(crdt.Path{"price"}) }, nil)
	})
}

func resolutionNeverPushedWithoutALease(t *testing.T, pol policy.Policy, hook policy.Resolver, editB func(*crdt.Doc) error, want any) {
	e := newSyncEnv(t)
	log := &appendLog{Store: memstore.New(), fences: map[string][]uint64{}}
	e.swap(log)
	a, b := e.device(nil), e.device(&Options{MergeHook: hook})
	setProfilePolicy(t, b, pol)
	ca, cb := coll2(t, a, "c"), coll2(t, b, "c")
	ca.Create("tea", map[string]any{"price": 10})
	mustSync(t, a, "p")
	mustSync(t, b, "p")
	ca.Update("tea", func(d *crdt.Doc) error { return d.Set(crdt.Path{"price"}, 12) })
	if err := cb.Update("tea", editB); err != nil {
		t.Fatal(err)
	}
	mustSync(t, a, "p")

	log.mu.Lock()
	log.refuseFence = true
	before := len(log.fences["tea"])
	log.mu.Unlock()
	if _, err := b.Sync(context.Background(), "p"); err == nil {
		t.Fatal("b's leased push was refused, yet its sync succeeded")
	}
	// A push without a lease (one-way from the device) leaves it alone.
	p, _ := b.Profile("p")
	p.Type = policy.OneWayFromClient
	b.UpdateProfile(p)
	mustSync(t, b, "p")
	log.mu.Lock()
	unleased := len(log.fences["tea"]) - before
	log.mu.Unlock()
	if unleased != 0 {
		t.Fatalf("the resolution was pushed %d time(s) without a lease", unleased)
	}
	if n, _ := cb.PendingCount(); n != 1 {
		t.Fatalf("b has %d pending records, want the resolved one", n)
	}
	// A two-way sync pushes it, under the lease.
	p.Type = policy.TwoWay
	b.UpdateProfile(p)
	mustSync(t, b, "p")
	mustSync(t, a, "p")
	log.mu.Lock()
	fences := log.fences["tea"][before:]
	log.mu.Unlock()
	if len(fences) != 1 || fences[0] == 0 {
		t.Fatalf("resolution pushed with fences %v, want one leased push", fences)
	}
	for _, r := range []*Replica{a, b} {
		if f := getFields(t, r, "c", "tea"); f["price"] != want {
			t.Fatalf("%s has %v, want price %v", r.ID()[:6], f, want)
		}
	}
}
