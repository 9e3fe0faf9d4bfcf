// Package pgtest gives tests a PostgreSQL database to work in: the one
// FERRY_TEST_POSTGRES names (a connection string), with a schema of their
// own, dropped when they end. Without FERRY_TEST_POSTGRES the tests skip,
// unless FERRY_REQUIRE_POSTGRES is set (CI sets both), which turns the skip
// into a failure. A test that restarts the server (Restart) waits for the
// other packages' tests on it to end first.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DSN returns the test database's connection string, or skips the test
// (fails it, under FERRY_REQUIRE_POSTGRES).
func DSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("FERRY_TEST_POSTGRES")
	if dsn == "" {
		if os.Getenv("FERRY_REQUIRE_POSTGRES") != "" {
			t.Fatal("FERRY_REQUIRE_POSTGRES is set but FERRY_TEST_POSTGRES is not: this test needs a PostgreSQL database")
		}
		t.Skip("FERRY_TEST_POSTGRES is not set: no PostgreSQL to test against (.ci/run starts one)")
	}
	holdShared(t, dsn)
	return dsn
}

// Schema returns the name of a schema no other test uses, dropped (with
// everything in it) when the test ends.
func Schema(t testing.TB) string {
	t.Helper()
	b := make([]byte, 6)
	rand.Read(b)
	name := "t_" + hex.EncodeToString(b)
	DropAtCleanup(t, name)
	return name
}

// DropAtCleanup drops the schema when the test ends.
func DropAtCleanup(t testing.TB, schema string) {
	t.Helper()
	dsn := DSN(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Errorf("dropping schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("dropping schema %s: %v", schema, err)
		}
	})
}

// Conn opens a connection to the test database with search_path set to
// schema (none if ""), closed when the test ends.
func Conn(t testing.TB, schema string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	if schema != "" {
		cfg.RuntimeParams["search_path"] = pgx.Identifier{schema}.Sanitize()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Restart restarts the PostgreSQL server with the shell command in
// FERRY_TEST_POSTGRES_RESTART (.ci/run sets one that stops the server at
// once, as a crash would, and starts it again), once the tests of other
// packages using the server have ended (see holdShared); those that start
// meanwhile wait for it. Without a command it returns false, unless
// FERRY_REQUIRE_POSTGRES is set, which fails the test.
func Restart(t testing.TB) bool {
	t.Helper()
	cmd := os.Getenv("FERRY_TEST_POSTGRES_RESTART")
	if cmd == "" {
		if os.Getenv("FERRY_REQUIRE_POSTGRES") != "" {
			t.Fatal("FERRY_REQUIRE_POSTGRES is set but FERRY_TEST_POSTGRES_RESTART is not: this test restarts the server")
		}
		return false
	}
	// The output goes to a file, not a pipe: the restarted server inherits
	// it, and would keep a pipe open long after the command returned.
	out, err := os.CreateTemp(t.TempDir(), "restart")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	err = exclusively(DSN(t), func() error {
		c := exec.Command("sh", "-c", cmd)
		c.Stdout, c.Stderr = out, out
		return c.Run()
	})
	if err != nil {
		b, _ := os.ReadFile(out.Name())
		t.Fatalf("restarting PostgreSQL (%s): %v\n%s", cmd, err, b)
	}
	return true
}

// CanCreateDatabases skips the test (fails it, under
// FERRY_REQUIRE_POSTGRES) unless the test database's role may create
// databases: CREATEDB, which a role given only CREATE on a database lacks.
func CanCreateDatabases(t testing.TB) {
	t.Helper()
	var ok bool
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Conn(t, "").QueryRow(ctx, "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&ok)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		if os.Getenv("FERRY_REQUIRE_POSTGRES") != "" {
			t.Fatal("FERRY_REQUIRE_POSTGRES is set but the role of FERRY_TEST_POSTGRES lacks CREATEDB: this test creates a database")
		}
		t.Skip("the role of FERRY_TEST_POSTGRES lacks CREATEDB (ALTER ROLE ... CREATEDB): this test creates a database")
	}
}

// WithDatabase returns the test database's connection string with another
// database name.
func WithDatabase(t testing.TB, db string) string {
	t.Helper()
	dsn := DSN(t)
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		u.Path = "/" + db
		return u.String()
	}
	// In key=value form, a later key wins.
	return dsn + " dbname=" + db
}
