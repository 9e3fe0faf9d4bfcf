package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

func testIncarnation(t *testing.T, s suite) {
	a, b := s.store(t), s.store(t)
	if a.Incarnation() == "" {
		t.Fatal("empty Incarnation")
	}
	if a.Incarnation() != a.Incarnation() {
		t.Fatal("Incarnation changes between calls")
	}
	if a.Incarnation() == b.Incarnation() {
		t.Fatalf("two new stores share incarnation %q", a.Incarnation())
	}
}

// Append numbers entries 1, 2, 3, ... and returns the last one's number.
func testAppendSequence(t *testing.T, s suite) {
	st := s.store(t)
	if h := head(t, st, coll); h != 0 {
		t.Fatalf("Head of an empty collection = %d", h)
	}
	a := entry("a", nil, "1")
	if h := mustAppend(t, st, coll, 0, t0, a); h != 1 {
		t.Fatalf("first Append = %d, want 1", h)
	}
	b, c := entry("b", nil, "1"), entry("c", nil, "1")
	if h := mustAppend(t, st, coll, 0, t0, b, c); h != 3 {
		t.Fatalf("Append of two = %d, want 3", h)
	}
	a2 := entry("a", a.Heads, "2")
	if h := mustAppend(t, st, coll, 0, t0, a2); h != 4 {
		t.Fatalf("fourth Append = %d, want 4", h)
	}
	if h := head(t, st, coll); h != 4 {
		t.Fatalf("Head = %d, want 4", h)
	}
	checkLog(t, readLog(t, st, coll, 0, 100), []relay.LogEntry{logged(1, a), logged(2, b), logged(3, c), logged(4, a2)})
	checkDoc(t, st, coll, "a", "2")
	checkDoc(t, st, coll, "c", "1")
}

// Invalid appends are refused with ErrInvalidArg, writing nothing.
func testAppendInvalid(t *testing.T, s suite) {
	st := s.store(t)
	noChanges := entry("a", nil, "1")
	noChanges.Changes = nil
	noHeads := entry("a", nil, "1")
	noHeads.Heads = nil
	cases := []struct {
		name string
		c    relay.Coll
		es   []relay.Entry
	}{
		{"no entries", coll, nil},
		{"no changes", coll, []relay.Entry{entry("b", nil, "1"), noChanges}},
		{"no heads", coll, []relay.Entry{noHeads}},
		{"empty record", coll, []relay.Entry{entry("", nil, "1")}},
		{"NUL in record", coll, []relay.Entry{entry("a\x00b", nil, "1")}},
		{"empty tenant", relay.Coll{Collection: "notes"}, []relay.Entry{entry("a", nil, "1")}},
		{"empty collection", relay.Coll{Tenant: "app1"}, []relay.Entry{entry("a", nil, "1")}},
		{"NUL in tenant", relay.Coll{Tenant: "app\x001", Collection: "notes"}, []relay.Entry{entry("a", nil, "1")}},
		{"NUL in collection", relay.Coll{Tenant: "app1", Collection: "no\x00tes"}, []relay.Entry{entry("a", nil, "1")}},
	}
	for _, tc := range cases {
		_, err := st.Append(ctx(t), tc.c, 0, t0, tc.es)
		wantErr(t, tc.name, err, relay.ErrInvalidArg)
		if h := head(t, st, tc.c); h != 0 {
			t.Fatalf("%s: Head = %d after a refused Append", tc.name, h)
		}
	}
	checkNoDoc(t, st, coll, "b")
}

// Each entry's Base must be the stored heads, nil for a new record.
func testBaseChecks(t *testing.T, s suite) {
	st := s.store(t)
	a1 := entry("a", nil, "1")
	mustAppend(t, st, coll, 0, t0, a1)

	cases := []struct {
		name string
		e    relay.Entry
	}{
		{"new record with a base", entry("new", version("new", "0"), "1")},
		{"existing record with nil base", entry("a", nil, "2")},
		{"existing record with empty base", entry("a", crdt.Heads{}, "2")},
		{"existing record with another base", entry("a", version("a", "0"), "2")},
		{"base a superset of the heads", entry("a", append(version("a", "1"), hash("x")), "2")},
	}
	for _, tc := range cases {
		_, err := st.Append(ctx(t), coll, 0, t0, []relay.Entry{tc.e})
		wantErr(t, tc.name, err, relay.ErrConflict)
		var ce *relay.ConflictError
		if !errors.As(err, &ce) || ce.Record != tc.e.Record {
			t.Fatalf("%s: err = %v, want a *relay.ConflictError for %q", tc.name, err, tc.e.Record)
		}
	}
	checkNoDoc(t, st, coll, "new")
	checkDoc(t, st, coll, "a", "1")

	// The right base, even as a separately built slice, passes.
	mustAppend(t, st, coll, 0, t0, entry("a", crdt.Heads{version("a", "1")[0]}, "2"))
	checkDoc(t, st, coll, "a", "2")
	// Heads compare as sets: order does not matter.
	two := relay.Entry{Record: "m", Changes: []byte("c"), Heads: crdt.Heads{hash("y"), hash("x")}}
	mustAppend(t, st, coll, 0, t0, two)
	mustAppend(t, st, coll, 0, t0, entry("m", crdt.Heads{hash("x"), hash("y")}, "3"))
}

// One bad Base fails the whole Append: no entry is written, no sequence
// number is used up.
func testConflictWritesNothing(t *testing.T, s suite) {
	st := s.store(t)
	a1, b1 := entry("a", nil, "1"), entry("b", nil, "1")
	mustAppend(t, st, coll, 0, t0, a1, b1)

	_, err := st.Append(ctx(t), coll, 0, t0, []relay.Entry{
		entry("c", nil, "1"),               // fine: new
		entry("a", a1.Heads, "2"),          // fine: right base
		entry("b", version("b", "0"), "2"), // wrong base
	})
	wantErr(t, "Append with one stale base", err, relay.ErrConflict)
	var ce *relay.ConflictError
	if !errors.As(err, &ce) || ce.Record != "b" {
		t.Fatalf("err = %v, want a conflict on record b", err)
	}
	if h := head(t, st, coll); h != 2 {
		t.Fatalf("Head = %d after a failed Append, want 2", h)
	}
	checkLog(t, readLog(t, st, coll, 0, 100), []relay.LogEntry{logged(1, a1), logged(2, b1)})
	checkNoDoc(t, st, coll, "c")
	checkDoc(t, st, coll, "a", "1")
	checkDoc(t, st, coll, "b", "1")
	snaps, err := st.Records(ctx(t), coll, "", 10)
	if err != nil || len(snaps) != 2 {
		t.Fatalf("Records = %d, %v; want a and b only", len(snaps), err)
	}
	if h := mustAppend(t, st, coll, 0, t0, entry("c", nil, "1")); h != 3 {
		t.Fatalf("Append after a conflict = %d, want 3: no sequence number may be skipped", h)
	}
}

// Entries apply in order: a second entry for a record in the same Append is
// checked against the first one's heads.
func testSameRecordTwice(t *testing.T, s suite) {
	st := s.store(t)
	e1 := entry("a", nil, "1")
	e2 := entry("a", e1.Heads, "2")
	if h := mustAppend(t, st, coll, 0, t0, e1, e2); h != 2 {
		t.Fatalf("Append = %d, want 2", h)
	}
	checkDoc(t, st, coll, "a", "2")
	snaps, err := st.Records(ctx(t), coll, "", 10)
	if err != nil || len(snaps) != 1 || snaps[0].Seq != 2 {
		t.Fatalf("Records = %+v, %v; want a at seq 2", snaps, err)
	}
	// The second entry based on the stored heads, not the first entry's,
	// conflicts.
	_, err = st.Append(ctx(t), coll, 0, t0, []relay.Entry{entry("a", e2.Heads, "3"), entry("a", e2.Heads, "4")})
	wantErr(t, "second entry on the old heads", err, relay.ErrConflict)
	checkDoc(t, st, coll, "a", "2")
	if h := head(t, st, coll); h != 2 {
		t.Fatalf("Head = %d, want 2", h)
	}
}

// A record is stored as what its pushes added: before any compaction,
// no snapshot, and a tail of every entry's changes in order.
func testRecord(t *testing.T, s suite) {
	st := s.store(t)
	checkNoDoc(t, st, coll, "a")
	checkNoDoc(t, st, relay.Coll{Tenant: "nobody", Collection: "nothing"}, "a")
	a1 := entry("a", nil, "1")
	mustAppend(t, st, coll, 0, t0, a1)
	checkRecord(t, st, coll, "a", nil, 0, 1, "1")
	mustAppend(t, st, coll, 0, t0, entry("b", nil, "1"), entry("a", a1.Heads, "2"))
	checkDoc(t, st, coll, "a", "2")
	checkRecord(t, st, coll, "a", nil, 0, 3, "1", "2")
	checkRecord(t, st, coll, "b", nil, 0, 2, "1")
	checkNoDoc(t, st, coll, "c")
	data, heads, err := relay.Document(ctx(t), st, coll, "a")
	if want := append(entry("a", nil, "1").Changes, entry("a", nil, "2").Changes...); err != nil || !bytes.Equal(data, want) || !heads.Equal(version("a", "2")) {
		t.Fatalf("relay.Document = %q %v %v", data, heads, err)
	}
}

// The store keeps its own copies: changing what was passed in or handed out
// changes nothing stored.
func testNoAliasing(t *testing.T, s suite) {
	st := s.store(t)
	e := entry("a", nil, "1")
	mustAppend(t, st, coll, 0, t0, e)
	clear(e.Changes)
	e.Heads[0] = hash("scribble")

	r, err := st.Record(ctx(t), coll, "a")
	if err != nil {
		t.Fatal(err)
	}
	clear(r.Tail)
	r.Heads[0] = hash("scribble")
	l := readLog(t, st, coll, 0, 10)
	clear(l[0].Changes)
	l[0].Heads[0] = hash("scribble")
	recs, err := st.Records(ctx(t), coll, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	clear(recs[0].Tail)
	recs[0].Heads[0] = hash("scribble")
	snap := []byte("snap a@1")
	if err := st.Compact(ctx(t), coll, "a", snap, 1); err != nil {
		t.Fatal(err)
	}
	clear(snap)
	r, err = st.Record(ctx(t), coll, "a")
	if err != nil {
		t.Fatal(err)
	}
	clear(r.Snapshot)

	if r := checkRecord(t, st, coll, "a", []byte("snap a@1"), 1, 1); !r.Heads.Equal(version("a", "1")) {
		t.Fatalf("heads %v", r.Heads)
	}
	checkLog(t, readLog(t, st, coll, 0, 10), []relay.LogEntry{logged(1, entry("a", nil, "1"))})
}

// Log(after, limit) pages through the log in order.
func testLogPaging(t *testing.T, s suite) {
	st := s.store(t)
	var all []relay.LogEntry
	for i := 1; i <= 10; i++ {
		e := entry(fmt.Sprintf("r%d", i), nil, "1")
		mustAppend(t, st, coll, 0, t0, e)
		all = append(all, logged(uint64(i), e))
	}
	checkLog(t, readLog(t, st, coll, 0, 100), all)
	checkLog(t, readLog(t, st, coll, 0, 3), all[:3])
	checkLog(t, readLog(t, st, coll, 3, 3), all[3:6])
	checkLog(t, readLog(t, st, coll, 9, 5), all[9:])
	checkLog(t, readLog(t, st, coll, 10, 5), nil)
	checkLog(t, readLog(t, st, coll, 1000, 5), nil)
	checkLog(t, readLog(t, st, coll, ^uint64(0), 5), nil)
	checkLog(t, readLog(t, st, coll, 0, 0), nil)
	checkLog(t, readLog(t, st, coll, 0, -1), nil)
	checkLog(t, readLog(t, st, relay.Coll{Tenant: "app1", Collection: "other"}, 0, 10), nil)

	var paged []relay.LogEntry
	for after := uint64(0); ; {
		page := readLog(t, st, coll, after, 4)
		if len(page) == 0 {
			break
		}
		if len(page) > 4 || page[0].Seq <= after {
			t.Fatalf("Log(%d, 4) returned %s", after, fmtLog(page))
		}
		paged = append(paged, page...)
		after = page[len(page)-1].Seq
	}
	checkLog(t, paged, all)
}

// Records are the records as stored, in record ID order, each with the
// sequence number of its last entry.
func testRecords(t *testing.T, s suite) {
	st := s.store(t)
	b1 := entry("b", nil, "1")
	mustAppend(t, st, coll, 0, t0, b1)                                              // 1
	mustAppend(t, st, coll, 0, t0, entry("a", nil, "1"))                            // 2
	mustAppend(t, st, coll, 0, t0, entry("c", nil, "1"))                            // 3
	mustAppend(t, st, coll, 0, t0, entry("b", b1.Heads, "2"), entry("d", nil, "1")) // 4, 5

	type want struct {
		record string
		vs     []string
		seq    uint64
	}
	check := func(after string, limit int, ws ...want) {
		t.Helper()
		got, err := st.Records(ctx(t), coll, after, limit)
		if err != nil {
			t.Fatalf("Records(%q, %d): %v", after, limit, err)
		}
		if len(got) != len(ws) {
			t.Fatalf("Records(%q, %d) returned %d, want %d: %+v", after, limit, len(got), len(ws), got)
		}
		for i, w := range ws {
			var data []byte
			for _, v := range w.vs {
				data = append(data, entry(w.record, nil, v).Changes...)
			}
			g := got[i]
			if g.ID != w.record || g.Seq != w.seq || !bytes.Equal(g.Data(), data) || !g.Heads.Equal(version(w.record, w.vs[len(w.vs)-1])) {
				t.Fatalf("Records(%q, %d)[%d] = {%s %q seq %d}, want {%s %q seq %d}",
					after, limit, i, g.ID, g.Data(), g.Seq, w.record, data, w.seq)
			}
		}
	}
	a, b, c, d := want{"a", []string{"1"}, 2}, want{"b", []string{"1", "2"}, 4}, want{"c", []string{"1"}, 3}, want{"d", []string{"1"}, 5}
	check("", 10, a, b, c, d)
	check("", 2, a, b)
	check("b", 2, c, d)
	check("c", 10, d)
	check("d", 10)
	check("aa", 10, b, c, d) // after need not name a record
	check("", 0)
	check("", -1)
	got, err := st.Records(ctx(t), relay.Coll{Tenant: "app1", Collection: "other"}, "", 10)
	if err != nil || len(got) != 0 {
		t.Fatalf("Records of an empty collection = %v, %v", got, err)
	}
}

// Record IDs sort as bytes (for PostgreSQL: COLLATE "C"), not by locale.
func testRecordOrder(t *testing.T, s suite) {
	st := s.store(t)
	ids := []string{"é", "a-", "B", "ab", "a", "Z", "a\x01", "~", "0"}
	for _, id := range ids {
		mustAppend(t, st, coll, 0, t0, entry(id, nil, "1"))
	}
	want := []string{"0", "B", "Z", "a", "a\x01", "a-", "ab", "~", "é"}
	var got []string
	for after := ""; ; {
		page, err := st.Records(ctx(t), coll, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, p := range page {
			if p.ID <= after {
				t.Fatalf("Records(%q, 2) returned %q", after, p.ID)
			}
			got = append(got, p.ID)
		}
		after = page[len(page)-1].ID
	}
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Fatalf("record order %q, want %q", got, want)
	}
}

// Tenants never see each other's data, nor collections each other's, even
// when names are prefixes of one another.
func testIsolation(t *testing.T, s suite) {
	st := s.store(t)
	colls := []relay.Coll{
		{Tenant: "t1", Collection: "notes"},
		{Tenant: "t2", Collection: "notes"},
		{Tenant: "t1", Collection: "tasks"},
		{Tenant: "t1", Collection: "notes2"},
		{Tenant: "t1n", Collection: "otes"},
		{Tenant: "t", Collection: "1notes"},
	}
	// Each collection gets i+1 entries, all to record "r", tagged with i.
	for i, c := range colls {
		var base crdt.Heads
		for n := 0; n <= i; n++ {
			e := entry("r", base, fmt.Sprintf("%d.%d", i, n))
			mustAppend(t, st, c, 0, t0, e)
			base = e.Heads
		}
	}
	for i, c := range colls {
		if h := head(t, st, c); h != uint64(i+1) {
			t.Fatalf("%v: Head = %d, want %d", c, h, i+1)
		}
		checkDoc(t, st, c, "r", fmt.Sprintf("%d.%d", i, i))
		l := readLog(t, st, c, 0, 100)
		if len(l) != i+1 {
			t.Fatalf("%v: log has %d entries, want %d: %s", c, len(l), i+1, fmtLog(l))
		}
		for n, e := range l {
			if want := entry("r", nil, fmt.Sprintf("%d.%d", i, n)); !bytes.Equal(e.Changes, want.Changes) {
				t.Fatalf("%v: log entry %d is %q, want %q", c, n, e.Changes, want.Changes)
			}
		}
		snaps, err := st.Records(ctx(t), c, "", 100)
		if err != nil || len(snaps) != 1 || snaps[0].Seq != uint64(i+1) {
			t.Fatalf("%v: Records = %+v, %v", c, snaps, err)
		}
	}
	checkNoDoc(t, st, relay.Coll{Tenant: "t3", Collection: "notes"}, "r")
}
