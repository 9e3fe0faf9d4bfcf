package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// Records are read as stored: the row, and its tail gathered from the log,
// in one statement (one snapshot). The collection is looked up first, as a
// value, so the plan walks the records' key in order and stops at the
// page's end, then gathers the tails of that page alone.
const (
	collIDSQL   = `(SELECT id FROM ferry_colls WHERE tenant = $1 AND coll = $2)`
	recordTails = `CROSS JOIN LATERAL (SELECT string_agg(l.changes, ''::bytea ORDER BY l.seq) AS tail, count(*) AS n
	                        FROM ferry_log l
	                       WHERE l.coll_id = r.coll_id AND l.record = r.record AND l.seq > r.snap_seq) t`
	recordCols = `r.record, r.heads, r.seq, r.snapshot, r.snap_seq, t.tail, t.n`
	recordSQL  = `SELECT ` + recordCols + ` FROM ferry_records r ` + recordTails +
		` WHERE r.coll_id = ` + collIDSQL + ` AND r.record = $3`
	recordsSQL = `SELECT ` + recordCols + `
	  FROM (SELECT * FROM ferry_records WHERE coll_id = ` + collIDSQL + ` AND record > $3 ORDER BY record LIMIT $4) r ` +
		recordTails + ` ORDER BY r.record`
)

func scanRecord(rows pgx.Rows) (relay.Record, error) {
	var (
		r             relay.Record
		heads         []byte
		seq, snapSeq  int64
		snapshot, tl  []byte
		tailEntries   int64
		decodeHeadsOK error
	)
	if err := rows.Scan(&r.ID, &heads, &seq, &snapshot, &snapSeq, &tl, &tailEntries); err != nil {
		return r, err
	}
	r.Heads, decodeHeadsOK = crdt.HeadsFromBytes(heads)
	if decodeHeadsOK != nil {
		return r, fmt.Errorf("%w: record %q: %w", relay.ErrStoreDamaged, r.ID, decodeHeadsOK)
	}
	r.Seq, r.SnapSeq, r.Snapshot, r.Tail, r.TailEntries = uint64(seq), uint64(snapSeq), snapshot, tl, int(tailEntries)
	return r, nil
}

// Record implements relay.Store.
func (s *Store) Record(ctx context.Context, c relay.Coll, record string) (relay.Record, error) {
	var out []relay.Record
	if unstorable(c.Tenant, c.Collection, record) {
		if err := s.closedErr(); err != nil || ctx.Err() != nil {
			return relay.Record{}, errors.Join(ctx.Err(), err)
		}
		return relay.Record{}, fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, relay.ErrNotFound)
	}
	err := s.run(ctx, "record", func(ctx context.Context) error {
		var err error
		out, err = s.queryRecords(ctx, recordSQL, c.Tenant, c.Collection, record)
		return err
	})
	if err != nil {
		return relay.Record{}, err
	}
	if len(out) == 0 {
		return relay.Record{}, fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, relay.ErrNotFound)
	}
	return out[0], nil
}

// RecordHeads implements relay.StoreRecordHeads: a record's heads alone,
// without its snapshot and tail.
func (s *Store) RecordHeads(ctx context.Context, c relay.Coll, record string) (crdt.Heads, error) {
	if unstorable(c.Tenant, c.Collection, record) {
		if err := s.closedErr(); err != nil || ctx.Err() != nil {
			return nil, errors.Join(ctx.Err(), err)
		}
		return nil, fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, relay.ErrNotFound)
	}
	var raw []byte
	found := false
	err := s.run(ctx, "record_heads", func(ctx context.Context) error {
		err := s.pool.QueryRow(ctx, `SELECT heads FROM ferry_records WHERE coll_id = `+collIDSQL+` AND record = $3`,
			c.Tenant, c.Collection, record).Scan(&raw)
		if errors.Is(err, pgx.ErrNoRows) {
			found = false
			return nil
		}
		found = err == nil
		return err
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("record %q in %s/%s: %w", record, c.Tenant, c.Collection, relay.ErrNotFound)
	}
	heads, err := crdt.HeadsFromBytes(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: record %q: %w", relay.ErrStoreDamaged, record, err)
	}
	return heads, nil
}

// Records implements relay.Store.
func (s *Store) Records(ctx context.Context, c relay.Coll, after string, limit int) ([]relay.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if limit <= 0 || unstorable(c.Tenant, c.Collection) {
		return nil, s.closedErr()
	}
	var out []relay.Record
	err := s.run(ctx, "records", func(ctx context.Context) error {
		var err error
		out, err = s.queryRecords(ctx, recordsSQL, c.Tenant, c.Collection, after, limit)
		return err
	})
	return out, err
}

// closedErr is ErrStoreClosed once Close has begun, else nil: for calls
// that return early without touching the database.
func (s *Store) closedErr() error {
	if s.isClosed() {
		return relay.ErrStoreClosed
	}
	return nil
}

func (s *Store) queryRecords(ctx context.Context, sql string, args ...any) ([]relay.Record, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []relay.Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
