package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// A role without CREATEDB skips the tests that create databases, with the
// reason, and fails them under FERRY_REQUIRE_POSTGRES.
func TestCanCreateDatabases(t *testing.T) {
	dsn := DSN(t)
	admin := Conn(t, "")
	var ok bool
	if err := admin.QueryRow(context.Background(), "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&ok); err != nil || !ok {
		t.Skipf("this test needs a role that may create roles and log in as them (%v, %v)", ok, err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	role := "t_nocreatedb_" + hex.EncodeToString(b)
	if _, err := admin.Exec(context.Background(), "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN"); err != nil {
		t.Skipf("cannot create a role to test with: %v", err)
	}
	t.Cleanup(func() { admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+pgx.Identifier{role}.Sanitize()) })

	// A role that can: nothing happens.
	CanCreateDatabases(t)

	// In key=value form, a later key wins.
	t.Setenv("FERRY_TEST_POSTGRES", dsn+" user="+role)
	for _, require := range []string{"", "1"} {
		t.Setenv("FERRY_REQUIRE_POSTGRES", require)
		rec := &recorder{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			CanCreateDatabases(rec)
		}()
		<-done
		switch {
		case require == "" && !(rec.skipped && strings.Contains(rec.msg, "lacks CREATEDB")):
			t.Errorf("without FERRY_REQUIRE_POSTGRES: skipped %v, failed %v: %q", rec.skipped, rec.failed, rec.msg)
		case require != "" && !(rec.failed && strings.Contains(rec.msg, "lacks CREATEDB")):
			t.Errorf("with FERRY_REQUIRE_POSTGRES: skipped %v, failed %v: %q", rec.skipped, rec.failed, rec.msg)
		}
	}
}

// recorder notes a skip or failure and ends its goroutine, as testing.T
// does, without ending the test.
type recorder struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (r *recorder) Helper() {}

func (r *recorder) Skip(args ...any) {
	r.skipped, r.msg = true, strings.TrimSpace(fmt.Sprintln(args...))
	runtime.Goexit()
}

func (r *recorder) Fatal(args ...any) {
	r.failed, r.msg = true, strings.TrimSpace(fmt.Sprintln(args...))
	runtime.Goexit()
}
