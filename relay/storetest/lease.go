package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/ferrysync/ferry/relay"
)

// leaseHeld asserts err is ErrLeaseHeld carrying the lease want.
func leaseHeld(t *testing.T, what string, err error, want relay.Lease) {
	t.Helper()
	wantErr(t, what, err, relay.ErrLeaseHeld)
	var he *relay.LeaseHeldError
	if !errors.As(err, &he) {
		t.Fatalf("%s: err = %v, want a *relay.LeaseHeldError", what, err)
	}
	if he.Lease.Holder != want.Holder || he.Lease.Fence != want.Fence || !he.Lease.Expires.Equal(want.Expires) {
		t.Fatalf("%s: LeaseHeldError carries %+v, want %+v", what, he.Lease, want)
	}
}

// staleAppend asserts an Append with fence at now fails with ErrStaleFence
// and writes nothing.
func staleAppend(t *testing.T, st relay.Store, c relay.Coll, fence uint64, now time.Time, what string) {
	t.Helper()
	before := head(t, st, c)
	_, err := st.Append(ctx(t), c, fence, now, []relay.Entry{entry("stale", nil, what)})
	wantErr(t, what, err, relay.ErrStaleFence)
	if h := head(t, st, c); h != before {
		t.Fatalf("%s: Head went from %d to %d", what, before, h)
	}
	checkNoDoc(t, st, c, "stale")
}

// Fence 0 appends without a lease, even while someone holds it: that is
// how live edits are pushed.
func testFenceZero(t *testing.T, s suite) {
	st := s.store(t)
	mustAppend(t, st, coll, 0, t0, entry("a", nil, "1"))
	mustAcquire(t, st, coll, "dev1", time.Minute, t0)
	mustAppend(t, st, coll, 0, t0, entry("b", nil, "1"))
	checkDoc(t, st, coll, "b", "1")
}

// The current lease's fence appends until just before it expires.
func testFenceCurrent(t *testing.T, s suite) {
	st := s.store(t)
	l := mustAcquire(t, st, coll, "dev1", time.Minute, t0)
	mustAppend(t, st, coll, l.Fence, t0, entry("a", nil, "1"))
	mustAppend(t, st, coll, l.Fence, l.Expires.Add(-time.Nanosecond), entry("b", nil, "1"))
	checkDoc(t, st, coll, "b", "1")
}

func testStaleFence(t *testing.T, s suite) {
	st := s.store(t)
	staleAppend(t, st, coll, 1, t0, "no lease ever")

	l1 := mustAcquire(t, st, coll, "dev1", time.Minute, t0)
	staleAppend(t, st, coll, l1.Fence+1, t0, "a fence above the current one")
	staleAppend(t, st, coll, l1.Fence, l1.Expires, "at the expiry instant")
	staleAppend(t, st, coll, l1.Fence, l1.Expires.Add(time.Hour), "after expiry")

	// Taken over after expiry: the old fence is stale at any now, even one
	// at which the old lease would still have been valid.
	l2 := mustAcquire(t, st, coll, "dev2", time.Minute, l1.Expires.Add(time.Second))
	staleAppend(t, st, coll, l1.Fence, t0, "an older fence")
	mustAppend(t, st, coll, l2.Fence, l1.Expires.Add(2*time.Second), entry("a", nil, "1"))

	if err := st.Release(ctx(t), coll, "dev2", l2.Fence); err != nil {
		t.Fatal(err)
	}
	staleAppend(t, st, coll, l2.Fence, l1.Expires.Add(3*time.Second), "a released lease")
}

func testAcquire(t *testing.T, s suite) {
	st := s.store(t)
	l1 := mustAcquire(t, st, coll, "dev1", time.Minute, t0)

	_, err := st.Acquire(ctx(t), coll, "dev2", time.Minute, t0.Add(time.Second))
	leaseHeld(t, "second holder", err, l1)
	_, err = st.Acquire(ctx(t), coll, "dev2", time.Minute, l1.Expires.Add(-time.Nanosecond))
	leaseHeld(t, "second holder just before expiry", err, l1)

	// The holder re-acquiring gets a new, higher fence; the old one is stale.
	l2 := mustAcquire(t, st, coll, "dev1", time.Hour, t0.Add(2*time.Second))
	if l2.Fence <= l1.Fence {
		t.Fatalf("re-acquire gave fence %d, not above %d", l2.Fence, l1.Fence)
	}
	staleAppend(t, st, coll, l1.Fence, t0.Add(3*time.Second), "the fence before a re-acquire")
	_, err = st.Renew(ctx(t), coll, "dev1", l1.Fence, time.Minute, t0.Add(3*time.Second))
	wantErr(t, "Renew of the fence before a re-acquire", err, relay.ErrStaleFence)
	mustAppend(t, st, coll, l2.Fence, t0.Add(3*time.Second), entry("a", nil, "1"))
	_, err = st.Acquire(ctx(t), coll, "dev2", time.Minute, l1.Expires.Add(time.Second))
	leaseHeld(t, "second holder after the re-acquire", err, l2)
}

// A lapsed lease can be taken by another holder, with a higher fence.
func testAcquireExpiry(t *testing.T, s suite) {
	st := s.store(t)
	l1 := mustAcquire(t, st, coll, "dev1", time.Minute, t0)
	// At the expiry instant the lease has lapsed (as for Append).
	l2 := mustAcquire(t, st, coll, "dev2", time.Minute, l1.Expires)
	if l2.Fence <= l1.Fence {
		t.Fatalf("fence after expiry %d, not above %d", l2.Fence, l1.Fence)
	}
	_, err := st.Acquire(ctx(t), coll, "dev1", time.Minute, l1.Expires.Add(time.Second))
	leaseHeld(t, "first holder after takeover", err, l2)
	staleAppend(t, st, coll, l1.Fence, l1.Expires.Add(time.Second), "the lapsed holder's fence")
	l3 := mustAcquire(t, st, coll, "dev3", time.Minute, l2.Expires.Add(time.Hour))
	if l3.Fence <= l2.Fence {
		t.Fatalf("fence %d, not above %d", l3.Fence, l2.Fence)
	}
}

func testRenew(t *testing.T, s suite) {
	st := s.store(t)
	l := mustAcquire(t, st, coll, "dev1", time.Minute, t0)
	now := t0.Add(50 * time.Second)
	r, err := st.Renew(ctx(t), coll, "dev1", l.Fence, 2*time.Minute, now)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if r.Holder != "dev1" || r.Fence != l.Fence || !r.Expires.Equal(now.Add(2*time.Minute)) {
		t.Fatalf("Renew = %+v, want dev1, fence %d, until %v", r, l.Fence, now.Add(2*time.Minute))
	}
	// The renewed lease holds past the original expiry, for appends and
	// against other holders.
	mustAppend(t, st, coll, l.Fence, l.Expires.Add(time.Second), entry("a", nil, "1"))
	_, err = st.Acquire(ctx(t), coll, "dev2", time.Minute, l.Expires.Add(time.Second))
	leaseHeld(t, "after renew", err, r)

	_, err = st.Renew(ctx(t), coll, "dev1", l.Fence+1, time.Minute, now)
	wantErr(t, "Renew of a wrong fence", err, relay.ErrStaleFence)
	_, err = st.Renew(ctx(t), coll, "dev1", l.Fence, time.Minute, r.Expires)
	wantErr(t, "Renew at the expiry instant", err, relay.ErrStaleFence)
	_, err = st.Renew(ctx(t), coll, "dev1", l.Fence, time.Minute, r.Expires.Add(time.Hour))
	wantErr(t, "Renew of an expired lease nobody took", err, relay.ErrStaleFence)

	other := relay.Coll{Tenant: "app1", Collection: "untouched"}
	_, err = st.Renew(ctx(t), other, "dev1", 1, time.Minute, t0)
	wantErr(t, "Renew without a lease", err, relay.ErrStaleFence)

	l2 := mustAcquire(t, st, coll, "dev2", time.Minute, r.Expires.Add(time.Hour))
	_, err = st.Renew(ctx(t), coll, "dev1", l.Fence, time.Minute, r.Expires.Add(time.Hour))
	wantErr(t, "Renew after takeover", err, relay.ErrStaleFence)
	if err := st.Release(ctx(t), coll, "dev2", l2.Fence); err != nil {
		t.Fatal(err)
	}
	_, err = st.Renew(ctx(t), coll, "dev2", l2.Fence, time.Minute, r.Expires.Add(time.Hour))
	wantErr(t, "Renew after release", err, relay.ErrStaleFence)
}

func testRelease(t *testing.T, s suite) {
	st := s.store(t)
	if err := st.Release(ctx(t), coll, "dev1", 7); err != nil {
		t.Fatalf("Release with no lease: %v", err)
	}
	l1 := mustAcquire(t, st, coll, "dev1", time.Hour, t0)
	if err := st.Release(ctx(t), coll, "dev1", l1.Fence); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := st.Release(ctx(t), coll, "dev1", l1.Fence); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	// Released long before expiry: another holder gets it at once.
	l2 := mustAcquire(t, st, coll, "dev2", time.Hour, t0.Add(time.Second))
	if l2.Fence <= l1.Fence {
		t.Fatalf("fence after release %d, not above %d", l2.Fence, l1.Fence)
	}
	// Releasing a superseded fence is not an error and leaves the current
	// lease alone.
	if err := st.Release(ctx(t), coll, "dev1", l1.Fence); err != nil {
		t.Fatalf("Release of a superseded fence: %v", err)
	}
	_, err := st.Acquire(ctx(t), coll, "dev3", time.Hour, t0.Add(2*time.Second))
	leaseHeld(t, "after releasing a superseded fence", err, l2)
	mustAppend(t, st, coll, l2.Fence, t0.Add(2*time.Second), entry("a", nil, "1"))
	// Releasing an expired lease is not an error either.
	if err := st.Release(ctx(t), coll, "dev2", l2.Fence); err != nil {
		t.Fatalf("Release of an expired lease: %v", err)
	}
}

// A lease belongs to its holder: another holder that knows (or guesses) the
// fence can neither extend nor end it.
func testLeaseBoundToHolder(t *testing.T, s suite) {
	st := s.store(t)
	l := mustAcquire(t, st, coll, "dev1", time.Minute, t0)

	_, err := st.Renew(ctx(t), coll, "dev2", l.Fence, time.Hour, t0.Add(time.Second))
	wantErr(t, "Renew by another holder", err, relay.ErrStaleFence)
	err = st.Release(ctx(t), coll, "dev2", l.Fence)
	wantErr(t, "Release by another holder", err, relay.ErrStaleFence)

	// The lease is as it was: same holder, same expiry, still fencing.
	_, err = st.Acquire(ctx(t), coll, "dev3", time.Minute, t0.Add(2*time.Second))
	leaseHeld(t, "after another holder's Renew and Release", err, l)
	mustAppend(t, st, coll, l.Fence, l.Expires.Add(-time.Nanosecond), entry("a", nil, "1"))
	staleAppend(t, st, coll, l.Fence, l.Expires, "at the unextended expiry")

	// Its holder still renews and releases it.
	l2 := mustAcquire(t, st, coll, "dev1", time.Minute, l.Expires)
	r, err := st.Renew(ctx(t), coll, "dev1", l2.Fence, time.Hour, l.Expires.Add(time.Second))
	if err != nil || r.Holder != "dev1" || r.Fence != l2.Fence {
		t.Fatalf("Renew by the holder = %+v, %v", r, err)
	}
	wantErr(t, "Release by another holder of a renewed lease", st.Release(ctx(t), coll, "dev2", l2.Fence), relay.ErrStaleFence)
	if err := st.Release(ctx(t), coll, "dev1", l2.Fence); err != nil {
		t.Fatalf("Release by the holder: %v", err)
	}
	mustAcquire(t, st, coll, "dev2", time.Minute, l.Expires.Add(2*time.Second))
}

func testLeaseInvalid(t *testing.T, s suite) {
	st := s.store(t)
	for _, tc := range []struct {
		name   string
		c      relay.Coll
		holder string
		ttl    time.Duration
	}{
		{"empty holder", coll, "", time.Minute},
		{"NUL in holder", coll, "dev\x001", time.Minute},
		{"zero TTL", coll, "dev1", 0},
		{"negative TTL", coll, "dev1", -time.Second},
		{"empty collection", relay.Coll{Tenant: "app1"}, "dev1", time.Minute},
	} {
		_, err := st.Acquire(ctx(t), tc.c, tc.holder, tc.ttl, t0)
		wantErr(t, "Acquire with "+tc.name, err, relay.ErrInvalidArg)
	}
	l := mustAcquire(t, st, coll, "dev1", time.Minute, t0)
	_, err := st.Renew(ctx(t), coll, "dev1", l.Fence, 0, t0)
	wantErr(t, "Renew with zero TTL", err, relay.ErrInvalidArg)
	_, err = st.Renew(ctx(t), coll, "", l.Fence, time.Minute, t0)
	wantErr(t, "Renew with an empty holder", err, relay.ErrInvalidArg)
	wantErr(t, "Release with an empty holder", st.Release(ctx(t), coll, "", l.Fence), relay.ErrInvalidArg)
	// The refused calls changed nothing.
	_, err = st.Acquire(ctx(t), coll, "dev2", time.Minute, t0)
	leaseHeld(t, "after refused Renew and Release", err, l)
}

// Fences grow through every path that makes a new lease, per collection.
func testFencesOnlyGrow(t *testing.T, s suite) {
	st := s.store(t)
	other := relay.Coll{Tenant: "app2", Collection: "notes"}
	var last uint64
	now := t0
	next := func(l relay.Lease) {
		t.Helper()
		if l.Fence <= last {
			t.Fatalf("fence %d after %d", l.Fence, last)
		}
		last = l.Fence
	}
	for i := 0; i < 3; i++ {
		l := mustAcquire(t, st, coll, "dev1", time.Minute, now) // fresh or after release
		next(l)
		next(mustAcquire(t, st, coll, "dev1", time.Minute, now)) // re-acquire
		now = now.Add(time.Hour)
		next(mustAcquire(t, st, coll, "dev2", time.Minute, now)) // after expiry
		if err := st.Release(ctx(t), coll, "dev2", last); err != nil {
			t.Fatal(err)
		}
		// Leases in another collection do not reset or share the counter
		// in a way that lets this one go back.
		lo := mustAcquire(t, st, other, "dev9", time.Minute, now)
		if err := st.Release(ctx(t), other, "dev9", lo.Fence); err != nil {
			t.Fatal(err)
		}
	}
}

// Everything survives Close and a reopen on the same dir: log, documents,
// the lease, the incarnation, and the fence counter.
func testReopen(t *testing.T, s suite) {
	if !s.durable {
		t.Skip("volatile store")
	}
	dir := t.TempDir()
	st := s.openAt(t, dir)
	inc := st.Incarnation()
	a1 := entry("a", nil, "1")
	mustAppend(t, st, coll, 0, t0, a1, entry("b", nil, "1"))
	l1 := mustAcquire(t, st, coll, "dev1", time.Minute, t0)
	if err := st.Release(ctx(t), coll, "dev1", l1.Fence); err != nil {
		t.Fatal(err)
	}
	l2 := mustAcquire(t, st, coll, "dev1", time.Hour, t0)
	mustAppend(t, st, coll, l2.Fence, t0, entry("a", a1.Heads, "2"))
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	st = s.openAt(t, dir)
	if got := st.Incarnation(); got != inc {
		t.Fatalf("Incarnation after reopen %q, want %q", got, inc)
	}
	if h := head(t, st, coll); h != 3 {
		t.Fatalf("Head after reopen = %d, want 3", h)
	}
	checkLog(t, readLog(t, st, coll, 0, 10), []relay.LogEntry{
		logged(1, a1), logged(2, entry("b", nil, "1")), logged(3, entry("a", a1.Heads, "2")),
	})
	checkDoc(t, st, coll, "a", "2")
	snaps, err := st.Records(ctx(t), coll, "", 10)
	if err != nil || len(snaps) != 2 || snaps[0].Seq != 3 || snaps[1].Seq != 2 {
		t.Fatalf("Records after reopen = %+v, %v", snaps, err)
	}
	// The lease survived: it still fences and still blocks.
	mustAppend(t, st, coll, l2.Fence, t0.Add(time.Minute), entry("c", nil, "1"))
	_, err = st.Acquire(ctx(t), coll, "dev2", time.Minute, t0.Add(time.Minute))
	leaseHeld(t, "after reopen", err, l2)
	// Released, the next fence is still above every earlier one.
	if err := st.Release(ctx(t), coll, "dev1", l2.Fence); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = s.openAt(t, dir)
	l3 := mustAcquire(t, st, coll, "dev2", time.Minute, t0.Add(time.Minute))
	if l3.Fence <= l2.Fence {
		t.Fatalf("fence after reopen %d, not above %d", l3.Fence, l2.Fence)
	}
	if h := mustAppend(t, st, coll, 0, t0, entry("d", nil, "1")); h != 5 {
		t.Fatalf("Append after reopen = %d, want 5", h)
	}
}
