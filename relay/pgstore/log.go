package pgstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// Append implements relay.Store: one call of ferry_append, one transaction.
// The call carries an id of its own, so a retry after a lost COMMIT finds
// the first attempt committed rather than appending again.
func (s *Store) Append(ctx context.Context, c relay.Coll, fence uint64, now time.Time, entries []relay.Entry) (uint64, error) {
	if err := relay.CheckAppend(c, entries); err != nil {
		return 0, err
	}
	if err := checkText("collection", c.Tenant, c.Collection); err != nil {
		return 0, err
	}
	for _, e := range entries {
		if err := checkText("record", e.Record); err != nil {
			return 0, err
		}
	}
	n := len(entries)
	recs := make([]string, n)
	bases := make([][]byte, n)
	changes := make([][]byte, n)
	heads := make([][]byte, n)
	for i, e := range entries {
		recs[i], changes[i], heads[i] = e.Record, e.Changes, e.Heads.Bytes()
		if len(e.Base) > 0 {
			bases[i] = e.Base.Bytes() // nil: NULL, a record the store must not hold
		}
	}
	id := s.appendID()
	var (
		status int
		head   *int64
		detail *string
		collID *int64
	)
	err := s.run(ctx, "append", func(ctx context.Context) error {
		return s.pool.QueryRow(ctx, `SELECT o_status, o_head, o_detail, o_coll FROM ferry_append($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			c.Tenant, c.Collection, int64(fence), now.UnixNano(), id, recs, bases, changes, heads,
		).Scan(&status, &head, &detail, &collID)
	})
	if err != nil {
		return 0, tooLarge(err)
	}
	switch status {
	case 0, 3:
		if collID != nil {
			s.colls.put(*collID, c)
			s.notifier.appended(*collID)
		}
		s.metrics.appended.Add(float64(n))
		if head == nil {
			return 0, fmt.Errorf("pgstore: ferry_append answered status %d without a head", status)
		}
		return uint64(*head), nil
	case 1:
		return 0, fmt.Errorf("append to %s/%s with fence %d: %w", c.Tenant, c.Collection, fence, relay.ErrStaleFence)
	case 2:
		rec := ""
		if detail != nil {
			rec = *detail
		}
		return 0, &relay.ConflictError{Record: rec}
	}
	return 0, fmt.Errorf("pgstore: ferry_append answered status %d", status)
}

// tooLarge maps PostgreSQL's limits on one value or message (a bytea over
// 1 GB, say) to relay.ErrAppendTooLarge.
func tooLarge(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "54000" || pe.Code == "54001") {
		return fmt.Errorf("%w: %w", relay.ErrAppendTooLarge, err)
	}
	return err
}

// appendID is a UUIDv7 on the database's clock: unique, and ordered by
// time, so ferry_appends is pruned by a range of its primary key.
func (s *Store) appendID() uuid.UUID {
	return uuidAt(s.clock.now())
}

func uuidAt(t time.Time) uuid.UUID {
	var u uuid.UUID
	rand.Read(u[6:])
	ms := uint64(t.UnixMilli())
	for i := 0; i < 6; i++ {
		u[i] = byte(ms >> (40 - 8*i))
	}
	u[6] = u[6]&0x0f | 0x70 // version 7
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return u
}

// appendIDRetention is how long an append's id is kept: far longer than a
// call retries (Options.RetryTimeout).
const appendIDRetention = 10 * time.Minute

// pruneAppendIDs drops the ids of appends older than appendIDRetention.
func (s *Store) pruneAppendIDs(ctx context.Context) error {
	var cutoff uuid.UUID
	ms := uint64(s.clock.now().Add(-appendIDRetention).UnixMilli())
	for i := 0; i < 6; i++ {
		cutoff[i] = byte(ms >> (40 - 8*i))
	}
	_, err := s.pool.Exec(ctx, "DELETE FROM ferry_appends WHERE id < $1", cutoff)
	return err
}

// Log implements relay.Store. The horizon and the entries are read in one
// statement, so a truncation running meanwhile can never show as a gap.
// Identical reads at the same moment (a collection's live subscribers,
// woken together) share one query; see logCoalescer.
func (s *Store) Log(ctx context.Context, c relay.Coll, after uint64, limit int) ([]relay.LogEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if limit <= 0 || unstorable(c.Tenant, c.Collection) {
		return nil, s.closedErr()
	}
	after = min(after, 1<<63-1) // nothing is above it
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.inflight.Done()
	res := s.logs.do(ctx, logKey{c, after, limit}, func() logResult {
		// It reads on for the other callers even if this one gives up,
		// until Close cancels s.base.
		var r logResult
		r.err = s.retry(s.base, "log", func(ctx context.Context) error {
			r.entries, r.horizon = r.entries[:0], 0
			return s.readLog(ctx, c, after, limit, &r)
		})
		return r
	})
	if res.err != nil {
		if errors.Is(res.err, context.Canceled) && s.base.Err() != nil {
			return nil, relay.ErrStoreClosed
		}
		return nil, res.err
	}
	if after < res.horizon {
		return nil, &relay.TruncatedError{Horizon: res.horizon}
	}
	return res.entries, nil
}

func (s *Store) readLog(ctx context.Context, c relay.Coll, after uint64, limit int, r *logResult) error {
	rows, err := s.pool.Query(ctx, `SELECT c.horizon, l.seq, l.record, l.changes, l.heads
		  FROM ferry_colls c
		  LEFT JOIN LATERAL (SELECT seq, record, changes, heads FROM ferry_log
		                      WHERE coll_id = c.id AND seq > $3 AND $3 >= c.horizon
		                      ORDER BY seq LIMIT $4) l ON true
		 WHERE c.tenant = $1 AND c.coll = $2`, c.Tenant, c.Collection, int64(after), limit)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			h       int64
			seq     *int64
			record  *string
			changes []byte
			heads   []byte
		)
		if err := rows.Scan(&h, &seq, &record, &changes, &heads); err != nil {
			return err
		}
		r.horizon = uint64(h)
		if seq == nil {
			continue
		}
		hs, err := crdt.HeadsFromBytes(heads)
		if err != nil {
			return fmt.Errorf("%w: log entry %d of %s/%s: %w", relay.ErrStoreDamaged, *seq, c.Tenant, c.Collection, err)
		}
		r.entries = append(r.entries, relay.LogEntry{Seq: uint64(*seq), Record: *record, Changes: changes, Heads: hs})
	}
	return rows.Err()
}

// Head implements relay.Store.
func (s *Store) Head(ctx context.Context, c relay.Coll) (uint64, error) {
	if unstorable(c.Tenant, c.Collection) {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		return 0, s.closedErr()
	}
	var head int64
	err := s.run(ctx, "head", func(ctx context.Context) error {
		err := s.pool.QueryRow(ctx, `SELECT head FROM ferry_colls WHERE tenant = $1 AND coll = $2`, c.Tenant, c.Collection).Scan(&head)
		if errors.Is(err, pgx.ErrNoRows) {
			head = 0
			return nil
		}
		return err
	})
	return uint64(head), err
}

// Heads implements relay.StoreEvents: the heads of many collections in one
// query.
func (s *Store) Heads(ctx context.Context, colls []relay.Coll) ([]uint64, error) {
	tenants := make([]string, len(colls))
	names := make([]string, len(colls))
	for i, c := range colls {
		if !unstorable(c.Tenant, c.Collection) { // else it stays "", which no collection is
			tenants[i], names[i] = c.Tenant, c.Collection
		}
	}
	out := make([]uint64, len(colls))
	err := s.run(ctx, "heads", func(ctx context.Context) error {
		rows, err := s.pool.Query(ctx, `SELECT w.i, coalesce((SELECT c.head FROM ferry_colls c WHERE c.tenant = w.t AND c.coll = w.n), 0)
			  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS w(t, n, i)`, tenants, names)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var i, h int64
			if err := rows.Scan(&i, &h); err != nil {
				return err
			}
			if i >= 1 && int(i) <= len(out) {
				out[i-1] = uint64(h)
			}
		}
		return rows.Err()
	})
	return out, err
}

// unstorable reports whether a name holds NUL or is not UTF-8, which no
// stored name is (relay.CheckName refuses NUL, and PostgreSQL text holds
// neither): a read of it finds nothing, without asking the database.
func unstorable(names ...string) bool {
	for _, n := range names {
		if strings.IndexByte(n, 0) >= 0 || !utf8.ValidString(n) {
			return true
		}
	}
	return false
}

// checkText refuses, beyond relay's own checks, names PostgreSQL text
// cannot hold: ones that are not UTF-8.
func checkText(what string, names ...string) error {
	for _, n := range names {
		if !utf8.ValidString(n) {
			return fmt.Errorf("%w: %s %q is not UTF-8, which PostgreSQL text requires", relay.ErrInvalidArg, what, n)
		}
	}
	return nil
}
