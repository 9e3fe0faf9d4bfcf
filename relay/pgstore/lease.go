package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrysync/ferry/relay"
)

// Lease times are stored as Unix nanoseconds: a lease lapses exactly at the
// instant the relay's clock gives, as the conformance suite requires.

func unixNano(ns int64) time.Time { return time.Unix(0, ns).UTC() }

// Acquire implements relay.Store. A retry after a lost COMMIT may grant a
// second, higher fence to the same holder: the holder gets a valid lease
// either way, as when it re-acquires.
func (s *Store) Acquire(ctx context.Context, c relay.Coll, holder string, ttl time.Duration, now time.Time) (relay.Lease, error) {
	if err := relay.CheckColl(c); err != nil {
		return relay.Lease{}, err
	}
	if err := relay.CheckLease(holder, ttl); err != nil {
		return relay.Lease{}, err
	}
	if err := checkText("collection or holder", c.Tenant, c.Collection, holder); err != nil {
		return relay.Lease{}, err
	}
	var (
		status         int
		l              relay.Lease
		fence, expires int64
	)
	err := s.run(ctx, "acquire", func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, `SELECT o_status, o_holder, o_fence, o_expires FROM ferry_acquire($1, $2, $3, $4, $5)`,
			c.Tenant, c.Collection, holder, int64(ttl), now.UnixNano()).Scan(&status, &l.Holder, &fence, &expires)
	})
	if err != nil {
		return relay.Lease{}, err
	}
	l.Fence, l.Expires = uint64(fence), unixNano(expires)
	if status != 0 {
		return relay.Lease{}, &relay.LeaseHeldError{Lease: l}
	}
	return l, nil
}

// Renew implements relay.Store.
func (s *Store) Renew(ctx context.Context, c relay.Coll, holder string, fence uint64, ttl time.Duration, now time.Time) (relay.Lease, error) {
	if err := relay.CheckLease(holder, ttl); err != nil {
		return relay.Lease{}, err
	}
	if unstorable(c.Tenant, c.Collection, holder) {
		if err := ctx.Err(); err != nil {
			return relay.Lease{}, err
		}
		if err := s.closedErr(); err != nil {
			return relay.Lease{}, err
		}
		return relay.Lease{}, fmt.Errorf("renew lease of %s/%s: no such lease: %w", c.Tenant, c.Collection, relay.ErrStaleFence)
	}
	var (
		renewed bool
		expires int64
	)
	err := s.run(ctx, "renew", func(ctx context.Context) error {
		// One statement: the update, and the lease as it was if the update
		// did not apply, to say why.
		return s.pool.QueryRow(ctx, `WITH u AS (
			  UPDATE ferry_colls SET lease_expires = $5 + $6
			   WHERE tenant = $1 AND coll = $2 AND lease_fence = $3 AND lease_holder = $4 AND $5 < lease_expires
			  RETURNING lease_expires)
			SELECT EXISTS (SELECT FROM u), coalesce((SELECT lease_expires FROM u), 0)`,
			c.Tenant, c.Collection, int64(fence), holder, now.UnixNano(), int64(ttl)).Scan(&renewed, &expires)
	})
	if err != nil {
		return relay.Lease{}, err
	}
	if !renewed {
		return relay.Lease{}, fmt.Errorf("renew lease of %s/%s with fence %d by %q: %w", c.Tenant, c.Collection, fence, holder, relay.ErrStaleFence)
	}
	return relay.Lease{Holder: holder, Fence: fence, Expires: unixNano(expires)}, nil
}

// Release implements relay.Store, and tells the other relays, whose lease
// waiters may take the lease now.
func (s *Store) Release(ctx context.Context, c relay.Coll, holder string, fence uint64) error {
	if err := relay.CheckName("holder", holder); err != nil {
		return err
	}
	if unstorable(c.Tenant, c.Collection, holder) {
		return errors.Join(ctx.Err(), s.closedErr())
	}
	var (
		collID      int64
		released    bool
		otherHolder bool
	)
	err := s.run(ctx, "release", func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, `WITH u AS (
			  UPDATE ferry_colls SET lease_holder = NULL, lease_fence = NULL, lease_expires = NULL
			   WHERE tenant = $1 AND coll = $2 AND lease_fence = $3 AND lease_holder = $4
			  RETURNING id)
			SELECT coalesce((SELECT id FROM u), 0), EXISTS (SELECT FROM u),
			       EXISTS (SELECT FROM ferry_colls WHERE tenant = $1 AND coll = $2 AND lease_fence = $3 AND lease_holder <> $4)`,
			c.Tenant, c.Collection, int64(fence), holder).Scan(&collID, &released, &otherHolder)
	})
	if err != nil {
		return err
	}
	if released {
		s.colls.put(collID, c)
		s.notifier.released(collID)
		return nil
	}
	if otherHolder {
		return fmt.Errorf("release lease of %s/%s with fence %d: held by another holder: %w", c.Tenant, c.Collection, fence, relay.ErrStaleFence)
	}
	return nil
}
