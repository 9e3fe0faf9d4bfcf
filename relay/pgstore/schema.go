package pgstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ferrysync/ferry/relay"
)

// The schema's migrations, applied in order at Open: migrations/NNNN_*.sql,
// numbered from 1 without gaps. A released file is never edited; a change
// of schema is a new file.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations returns the embedded migrations in order, checking their
// numbering.
func loadMigrations() ([]migration, error) {
	entries, err := migrationFiles.ReadDir("migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("pgstore: migration file %s is not named NNNN_name.sql", e.Name())
		}
		b, err := migrationFiles.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: e.Name(), sql: string(b)})
	}
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("pgstore: migration %s should be number %d", m.name, i+1)
		}
	}
	return out, nil
}

// SchemaVersion is the version of the schema this build of Ferry writes:
// its number of migrations.
func SchemaVersion() int {
	ms, err := loadMigrations()
	if err != nil {
		panic(err) // the embedded files are checked by the tests
	}
	return len(ms)
}

// lockClass is the first key of the store's advisory lock ("ferr"); the
// second is a hash of the schema's name, so stores in different schemas
// migrate independently.
const lockClass = 0x66657272

// migrate brings the schema to SchemaVersion under the schema's advisory
// lock (a relay starting at the same time waits for it, then finds the
// schema current), and returns the incarnation.
func (s *Store) migrate(ctx context.Context) (string, error) {
	ms, err := loadMigrations()
	if err != nil {
		return "", err
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return "", fmt.Errorf("pgstore: connecting: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1, hashtext($2))", lockClass, s.opts.Schema); err != nil {
		return "", fmt.Errorf("pgstore: waiting for the schema lock: %w", err)
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1, hashtext($2))", lockClass, s.opts.Schema); err != nil {
			// A session lock ends with its session: end it rather than
			// hand the pool a connection that still holds the lock.
			conn.Conn().Close(context.WithoutCancel(ctx))
		}
	}()
	schema := pgx.Identifier{s.opts.Schema}.Sanitize()
	if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+schema+";"+
		"CREATE TABLE IF NOT EXISTS "+schema+".ferry_migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"); err != nil {
		return "", fmt.Errorf("pgstore: creating schema %s: %w", schema, err)
	}
	var cur int
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+schema+".ferry_migrations").Scan(&cur); err != nil {
		return "", fmt.Errorf("pgstore: reading the schema version: %w", err)
	}
	if cur > len(ms) {
		return "", fmt.Errorf("%w: schema %s is at version %d, this Ferry knows up to %d", relay.ErrNewerStoreFormat, schema, cur, len(ms))
	}
	for _, m := range ms[cur:] {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO "+schema+".ferry_migrations (version, name) VALUES ($1, $2)", m.version, m.name)
			return err
		})
		if err != nil {
			return "", fmt.Errorf("pgstore: migrating schema %s to version %d (%s): %w", schema, m.version, m.name, err)
		}
		s.opts.Logger.Info("migrated the relay store's schema", "schema", s.opts.Schema, "version", m.version, "migration", m.name)
	}
	return s.incarnate(ctx, conn.Conn())
}

// fingerprintSQL identifies the database the store's tables are in: the
// OID of ferry_meta, and the cluster's system identifier. A logical restore
// (pg_dump, then pg_restore or psql) makes new tables with new OIDs, and a
// copy to another cluster has another system identifier. Where
// pg_control_system() is not granted (some managed services), the OID
// alone (fingerprintOIDSQL) still tells a logical restore.
const (
	fingerprintSQL    = `SELECT 'ferry_meta'::regclass::oid::text || '/' || (SELECT system_identifier FROM pg_control_system())::text`
	fingerprintOIDSQL = `SELECT 'ferry_meta'::regclass::oid::text`
)

// incarnate returns the store's incarnation, making a new one if there is
// none yet or the data is not in the database it was made in (it was
// restored or copied): cursors and acknowledged heads that devices hold
// may then point past the log. The caller holds the schema lock.
func (s *Store) incarnate(ctx context.Context, conn *pgx.Conn) (string, error) {
	var fp string
	if err := conn.QueryRow(ctx, fingerprintSQL).Scan(&fp); err != nil {
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" { // insufficient_privilege
			return "", fmt.Errorf("pgstore: fingerprinting the database: %w", err)
		}
		if err := conn.QueryRow(ctx, fingerprintOIDSQL).Scan(&fp); err != nil {
			return "", fmt.Errorf("pgstore: fingerprinting the database: %w", err)
		}
	}
	meta := map[string]string{}
	rows, err := conn.Query(ctx, "SELECT key, value FROM ferry_meta")
	if err != nil {
		return "", fmt.Errorf("pgstore: reading ferry_meta: %w", err)
	}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return "", err
		}
		meta[k] = v
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("pgstore: reading ferry_meta: %w", err)
	}
	inc := meta["incarnation"]
	if inc != "" && meta["fingerprint"] == fp {
		return inc, nil
	}
	next := uuid.NewString()
	if inc != "" {
		s.opts.Logger.Warn("the relay store's data is not in the database it was written in (restored or copied): "+
			"new incarnation, devices will re-sync the slow way", "schema", s.opts.Schema, "old_incarnation", inc, "incarnation", next)
	}
	_, err = conn.Exec(ctx, `INSERT INTO ferry_meta (key, value) VALUES ('incarnation', $1), ('fingerprint', $2)
		ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value`, next, fp)
	if err != nil {
		return "", fmt.Errorf("pgstore: writing the incarnation: %w", err)
	}
	return next, nil
}
