package pgstore

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/internal/pgtest"
	"github.com/ferrysync/ferry/relay"
)

func TestMigrationsAreNumbered(t *testing.T) {
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 || SchemaVersion() != len(ms) {
		t.Fatalf("%d migrations, SchemaVersion %d", len(ms), SchemaVersion())
	}
}

// The partial index of compaction candidates holds relay.NeedsCompaction's
// constants: if they change, a migration must rebuild it. The query finds
// its records through it.
func TestCandidateIndexMatchesRelay(t *testing.T) {
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	pred := fmt.Sprintf("tail_entries >= 2 AND (tail_bytes > greatest(snap_bytes, %d) OR tail_entries > %d)", relay.CompactTailBytes, relay.CompactTailEntries)
	if !strings.Contains(ms[0].sql, pred) {
		t.Fatalf("the index's predicate is not %q: relay's constants changed; add a migration that rebuilds ferry_records_candidates", pred)
	}
	schema := pgtest.Schema(t)
	s, err := Open(context.Background(), pgtest.DSN(t), &Options{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	conn := pgtest.Conn(t, schema)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, "SET enable_seqscan = off"); err != nil {
		t.Fatal(err)
	}
	var plan strings.Builder
	rows, err := conn.Query(ctx, "EXPLAIN "+strings.ReplaceAll(strings.ReplaceAll(candidateSQL, "$1", "64"), "$2", "'x'"))
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var line string
		rows.Scan(&line)
		plan.WriteString(line + "\n")
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if !strings.Contains(plan.String(), "ferry_records_candidates") {
		t.Fatalf("the candidate query does not use the partial index:\n%s", plan.String())
	}
}

// Append ids are ordered by time, and pruned once far older than any
// retry.
func TestAppendIDsArePruned(t *testing.T) {
	if a, b := uuidAt(time.Unix(100, 0)), uuidAt(time.Unix(100, 2e6)); strings.Compare(a.String(), b.String()) >= 0 || a.Version() != 7 {
		t.Fatalf("ids %v then %v: not ordered by time, or not version 7", a, b)
	}
	var skew atomic.Int64
	schema := pgtest.Schema(t)
	s, err := Open(context.Background(), pgtest.DSN(t), &Options{Schema: schema,
		localClock: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	c := relay.Coll{Tenant: "app", Collection: "notes"}
	if _, err := s.Append(ctx, c, 0, s.Now(), []relay.Entry{{Record: "a", Changes: []byte("x"), Heads: crdt.Heads{{1}}}}); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		var n int
		if err := pgtest.Conn(t, schema).QueryRow(ctx, "SELECT count(*) FROM ferry_appends").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if err := s.pruneAppendIDs(ctx); err != nil || count() != 1 {
		t.Fatalf("a fresh id was pruned (%d left, %v)", count(), err)
	}
	skew.Store(int64(appendIDRetention + time.Minute))
	if err := s.pruneAppendIDs(ctx); err != nil || count() != 0 {
		t.Fatalf("an id older than the retention was kept (%d left, %v)", count(), err)
	}
}
