package pgstore

import (
	"context"
	"errors"
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

// Truncate goes in steps, each moving the horizon with its deletions, and
// stops at the first entry a tail holds.
func TestTruncateInSteps(t *testing.T) {
	old := truncateStep
	truncateStep = 2
	defer func() { truncateStep = old }()
	s, err := Open(context.Background(), pgtest.DSN(t), &Options{Schema: pgtest.Schema(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	c := relay.Coll{Tenant: "app", Collection: "notes"}
	for i := range 9 {
		id := fmt.Sprint("r", i)
		if _, err := s.Append(ctx, c, 0, s.Now(), []relay.Entry{{Record: id, Changes: []byte(id), Heads: crdt.Heads{{byte(i + 1)}}}}); err != nil {
			t.Fatal(err)
		}
		if i != 7 { // r7's entry, seq 8, stays in its tail
			if err := s.Compact(ctx, c, id, []byte("snap"), uint64(i+1)); err != nil {
				t.Fatal(err)
			}
		}
	}
	h, err := s.Truncate(ctx, c, 100)
	if err != nil || h != 7 {
		t.Fatalf("Truncate = %d, %v; want horizon 7", h, err)
	}
	if _, err := s.Log(ctx, c, 6, 10); !errors.Is(err, relay.ErrTruncated) {
		t.Fatalf("Log below the horizon: %v", err)
	}
	l, err := s.Log(ctx, c, 7, 10)
	if err != nil || len(l) != 2 || l[0].Seq != 8 {
		t.Fatalf("Log after the horizon = %v, %v", l, err)
	}
	st, err := s.Stats(ctx)
	if err != nil || st.LogEntries != 2 {
		t.Fatalf("Stats = %+v, %v; want 2 entries", st, err)
	}
}
