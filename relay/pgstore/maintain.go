package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrysync/ferry/relay"
)

// Compact implements relay.Store. It locks the record's row only, never
// the collection's, so it never blocks an Append for longer than its own
// short transaction, and never fails one.
func (s *Store) Compact(ctx context.Context, c relay.Coll, record string, snap []byte, upTo uint64) error {
	if err := relay.CheckColl(c); err != nil {
		return err
	}
	if unstorable(c.Tenant, c.Collection, record) {
		return fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, relay.ErrNotFound)
	}
	var status int
	err := s.run(ctx, "compact", func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, `SELECT o_status FROM ferry_compact($1, $2, $3, $4, $5)`,
			c.Tenant, c.Collection, record, snap, int64(min(upTo, 1<<63-1))).Scan(&status)
	})
	if err != nil {
		return err
	}
	switch status {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, relay.ErrNotFound)
	}
	return &relay.ConflictError{Record: record}
}

// candidateSQL finds records relay.NeedsCompaction would pick, through the
// partial index ferry_records_candidates (whose predicate this repeats),
// in an order of this Store's own, so that relays sharing the database
// mostly pick different ones.
var candidateSQL = fmt.Sprintf(`SELECT c.tenant, c.coll, r.record
	  FROM ferry_records r JOIN ferry_colls c ON c.id = r.coll_id
	 WHERE r.tail_entries >= 2 AND (r.tail_bytes > greatest(r.snap_bytes, %d) OR r.tail_entries > %d)
	 ORDER BY hashtext(r.record || $2)
	 LIMIT $1`, relay.CompactTailBytes, relay.CompactTailEntries)

// CompactionCandidates implements relay.Store.
func (s *Store) CompactionCandidates(ctx context.Context, limit int) ([]relay.Candidate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, s.closedErr()
	}
	var out []relay.Candidate
	err := s.run(ctx, "candidates", func(ctx context.Context) error {
		out = out[:0]
		rows, err := s.pool.Query(ctx, candidateSQL, limit, s.tag)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var cd relay.Candidate
			if err := rows.Scan(&cd.Coll.Tenant, &cd.Coll.Collection, &cd.Record); err != nil {
				return err
			}
			out = append(out, cd)
		}
		return rows.Err()
	})
	return out, err
}

// truncateStep bounds the entries one transaction of Truncate deletes, so
// that no statement runs long. A variable for the tests.
var truncateStep = 10_000

// Truncate implements relay.Store, in steps of at most truncateStep
// entries, each of which moves the horizon with its deletions.
func (s *Store) Truncate(ctx context.Context, c relay.Coll, upTo uint64) (uint64, error) {
	if err := relay.CheckColl(c); err != nil {
		return 0, err
	}
	if unstorable(c.Tenant, c.Collection) {
		return 0, errors.Join(ctx.Err(), s.closedErr())
	}
	var horizon int64
	for {
		var more bool
		err := s.run(ctx, "truncate", func(ctx context.Context) error {
			return s.pool.QueryRow(ctx, `SELECT o_horizon, o_more FROM ferry_truncate($1, $2, $3, $4)`,
				c.Tenant, c.Collection, int64(min(upTo, 1<<63-1)), truncateStep).Scan(&horizon, &more)
		})
		if err != nil || !more {
			return uint64(horizon), err
		}
	}
}

// Usage implements relay.Store.
func (s *Store) Usage(ctx context.Context, tenant string) (relay.Usage, error) {
	var u relay.Usage
	if unstorable(tenant) {
		if err := ctx.Err(); err != nil {
			return u, err
		}
		return u, s.closedErr()
	}
	err := s.run(ctx, "usage", func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, `SELECT coalesce(sum(r.snap_bytes + r.tail_bytes), 0)::bigint, count(r.record)
			  FROM ferry_colls c JOIN ferry_records r ON r.coll_id = c.id
			 WHERE c.tenant = $1`, tenant).Scan(&u.Bytes, &u.Records)
	})
	return u, err
}

// Stats implements relay.Store: the entries between each collection's
// horizon and head, and the tables' size on disk. It retries for two
// seconds at most, so that /healthz reports a database it cannot reach
// promptly, yet not a connection the server dropped a moment ago.
func (s *Store) Stats(ctx context.Context) (relay.StoreStats, error) {
	if err := s.begin(ctx); err != nil {
		return relay.StoreStats{}, err
	}
	defer s.inflight.Done()
	var st relay.StoreStats
	err := s.retryWithin(ctx, "stats", 2*time.Second, func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, `SELECT
			  (SELECT coalesce(sum(head - horizon), 0)::bigint FROM ferry_colls),
			  pg_total_relation_size('ferry_log') + pg_total_relation_size('ferry_records') +
			  pg_total_relation_size('ferry_colls') + pg_total_relation_size('ferry_appends')`).Scan(&st.LogEntries, &st.Bytes)
	})
	return st, err
}
