package badgerstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// Tests of what is particular to Store; the contract is checked by
// storetest in store_test.go.

var bsColl = relay.Coll{Tenant: "app1", Collection: "notes"}

func bsEntry(record string, base crdt.Heads, v string) relay.Entry {
	return relay.Entry{
		Record:  record,
		Base:    base,
		Changes: []byte("changes " + record + "@" + v),
		Heads:   crdt.Heads{crdt.Hash(sha256.Sum256([]byte(record + "@" + v)))},
	}
}

func bsOpen(t *testing.T, dir string, o *Options) *Store {
	t.Helper()
	s, err := Open(dir, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func bsAppend(t *testing.T, s relay.Store, fence uint64, now time.Time, es ...relay.Entry) uint64 {
	t.Helper()
	h, err := s.Append(context.Background(), bsColl, fence, now, es)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	return h
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// dirState is each file's size and hash, to prove a refused open wrote
// nothing.
func dirState(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	state := make(map[string][32]byte)
	for _, name := range dirNames(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		state[name] = sha256.Sum256(b)
	}
	return state
}

func checkUntouched(t *testing.T, dir string, before map[string][32]byte) {
	t.Helper()
	if after := dirState(t, dir); !maps.Equal(before, after) {
		t.Fatalf("a refused open changed the folder: %d files before, %d after", len(before), len(after))
	}
}

func TestBadgerBackupRestore(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s := bsOpen(t, t.TempDir(), nil)
	a1 := bsEntry("a", nil, "1")
	bsAppend(t, s, 0, now, a1, bsEntry("b", nil, "1"))
	other := relay.Coll{Tenant: "app2", Collection: "tasks"}
	if _, err := s.Append(ctx, other, 0, now, []relay.Entry{bsEntry("x", nil, "1")}); err != nil {
		t.Fatal(err)
	}
	l, err := s.Acquire(ctx, bsColl, "dev1", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	bsAppend(t, s, l.Fence, now, bsEntry("a", a1.Heads, "2"))

	var backup bytes.Buffer
	if err := s.Backup(&backup); err != nil {
		t.Fatalf("Backup: %v", err)
	}
	// Written after the backup: lost by the restore.
	bsAppend(t, s, 0, now, bsEntry("c", nil, "1"))

	dir := filepath.Join(t.TempDir(), "restored") // missing: created
	if err := Restore(dir, bytes.NewReader(backup.Bytes())); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	r := bsOpen(t, dir, nil)
	if r.Incarnation() == s.Incarnation() || r.Incarnation() == "" {
		t.Fatalf("restored incarnation %q, original %q: want a new one", r.Incarnation(), s.Incarnation())
	}
	for _, c := range []relay.Coll{bsColl, other} {
		want, _ := s.Log(ctx, c, 0, 100)
		got, err := r.Log(ctx, c, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		if c == bsColl {
			want = want[:3] // without c
		}
		if !slices.EqualFunc(got, want, func(a, b relay.LogEntry) bool {
			return a.Seq == b.Seq && a.Record == b.Record && bytes.Equal(a.Changes, b.Changes) && a.Heads.Equal(b.Heads)
		}) {
			t.Fatalf("%v: restored log %+v, want %+v", c, got, want)
		}
	}
	doc, heads, err := relay.Document(ctx, r, bsColl, "a")
	if a2 := bsEntry("a", nil, "2"); err != nil || !bytes.HasSuffix(doc, a2.Changes) || !heads.Equal(a2.Heads) {
		t.Fatalf("restored document a = %q, %v, %v", doc, heads, err)
	}
	if _, _, err := relay.Document(ctx, r, bsColl, "c"); !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("record written after the backup: %v", err)
	}
	// Leases are dropped, and fences jump past any the original may have
	// granted after the backup.
	if _, err := r.Append(ctx, bsColl, l.Fence, now, []relay.Entry{bsEntry("d", nil, "1")}); !errors.Is(err, relay.ErrStaleFence) {
		t.Fatalf("Append with a pre-backup fence after restore: %v", err)
	}
	l2, err := r.Acquire(ctx, bsColl, "dev2", time.Hour, now)
	if err != nil {
		t.Fatalf("Acquire after restore: %v", err)
	}
	if l2.Fence <= l.Fence+restoreFenceGap-1 {
		t.Fatalf("fence after restore %d, want above %d", l2.Fence, l.Fence+restoreFenceGap-1)
	}
	// The restored store is stable across reopen.
	inc := r.Incarnation()
	r.Close()
	if r2 := bsOpen(t, dir, nil); r2.Incarnation() != inc {
		t.Fatalf("incarnation changed on reopen: %q then %q", inc, r2.Incarnation())
	}
}

func TestBadgerRestoreRefusesNonEmpty(t *testing.T) {
	s := bsOpen(t, t.TempDir(), nil)
	var backup bytes.Buffer
	if err := s.Backup(&backup); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keep := filepath.Join(dir, "precious.txt")
	if err := os.WriteFile(keep, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Restore(dir, bytes.NewReader(backup.Bytes()))
	if !errors.Is(err, os.ErrExist) {
		t.Fatalf("restore into a non-empty dir: %v, want os.ErrExist", err)
	}
	if got := dirNames(t, dir); !slices.Equal(got, []string{"precious.txt"}) {
		t.Fatalf("dir now holds %v", got)
	}
	// Nor over an existing store.
	if err := Restore(s.db.Opts().Dir, bytes.NewReader(backup.Bytes())); !errors.Is(err, os.ErrExist) {
		t.Fatalf("restore over a store: %v", err)
	}
}

func TestBadgerRestoreBadInput(t *testing.T) {
	// Garbage: Load fails. An empty stream, or a backup of another Badger
	// database: no relay format marker. Each leaves the dir empty.
	foreign := func() []byte {
		db, err := badger.Open(badger.DefaultOptions("").WithInMemory(true).WithLogger(nil))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("k"), []byte("v")) }); err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if _, err := db.Backup(&b, 0); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}()
	for name, in := range map[string][]byte{
		"garbage": []byte("\x05\x00\x00\x00\x00\x00\x00\x00hello"),
		"empty":   nil,
		"foreign": foreign,
	} {
		dir := t.TempDir()
		err := Restore(dir, bytes.NewReader(in))
		if err == nil {
			t.Fatalf("%s: restore succeeded", name)
		}
		if name != "garbage" && !errors.Is(err, relay.ErrNotRelayStore) {
			t.Fatalf("%s: err = %v, want relay.ErrNotRelayStore", name, err)
		}
		if got := dirNames(t, dir); len(got) != 0 {
			t.Fatalf("%s: failed restore left %v", name, got)
		}
	}
}

func TestBadgerOpenRefusesOtherFolders(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, nil); !errors.Is(err, relay.ErrNotRelayStore) {
		t.Fatalf("open a folder of other files: %v", err)
	}
	if got := dirNames(t, dir); !slices.Equal(got, []string{"notes.txt"}) {
		t.Fatalf("open wrote into the folder: %v", got)
	}

	// A Badger database of someone else (a device replica, say).
	dir = t.TempDir()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("m/format"), []byte{0, 0, 0, 1}) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	before := dirState(t, dir)
	if _, err := Open(dir, nil); !errors.Is(err, relay.ErrNotRelayStore) {
		t.Fatalf("open another Badger database: %v", err)
	}
	checkUntouched(t, dir, before)
}

func TestBadgerOpenRefusesNewerFormat(t *testing.T) {
	dir := t.TempDir()
	s := bsOpen(t, dir, nil)
	if err := s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(keyFormat, binary.BigEndian.AppendUint32(nil, badgerFormat+1))
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	before := dirState(t, dir)
	if _, err := Open(dir, nil); !errors.Is(err, relay.ErrNewerStoreFormat) {
		t.Fatalf("open a newer store: %v", err)
	}
	checkUntouched(t, dir, before)
}

// An Append past Badger's transaction limit (15% of the 8 MiB memtable;
// values under 1 MiB count in full) is written in several and goes
// through whole: 12 entries of 900 KB, one transaction each.
func TestBadgerLargeAppend(t *testing.T) {
	s := bsOpen(t, t.TempDir(), &Options{Relaxed: true})
	big := bytes.Repeat([]byte{'x'}, 900<<10)
	var es []relay.Entry
	for i := range 12 {
		e := bsEntry(string(rune('a'+i)), nil, "1")
		e.Changes = big
		es = append(es, e)
	}
	txns := 0
	s.splitHook = func(k int) error { txns = k; return nil }
	if h := bsAppend(t, s, 0, time.Now(), es...); h != 12 {
		t.Fatalf("Append = %d, want 12", h)
	}
	if txns < 12 {
		t.Fatalf("%d transactions, want one per entry and one to publish them", txns)
	}
	for _, e := range es {
		doc, heads, err := relay.Document(context.Background(), s, bsColl, e.Record)
		if err != nil || !bytes.Equal(doc, big) || !heads.Equal(e.Heads) {
			t.Fatalf("Document(%s): %d bytes, %v, %v", e.Record, len(doc), heads, err)
		}
	}
}

// Close stops the value-log GC goroutine and waits for it; it may run often.
func TestBadgerCloseStopsGC(t *testing.T) {
	for range 3 {
		s, err := Open(t.TempDir(), &Options{GCInterval: time.Microsecond, Relaxed: true})
		if err != nil {
			t.Fatal(err)
		}
		bsAppend(t, s, 0, time.Now(), bsEntry("a", nil, "1"))
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if err := s.Backup(&bytes.Buffer{}); !errors.Is(err, relay.ErrStoreClosed) {
			t.Fatalf("Backup after Close: %v", err)
		}
	}
}

// Corrupt values give errors, never panics.
func TestBadgerDecodeCorrupt(t *testing.T) {
	e := bsEntry("a", nil, "1")
	l := relay.Lease{Holder: "dev", Fence: 300, Expires: time.Unix(0, 12345)}
	m := recMeta{seq: 7, snapSeq: 5, snapBytes: 100, tailBytes: 20, tailEntries: 2, heads: e.Heads}
	u := relay.Usage{Bytes: 123, Records: 4}
	for _, v := range [][]byte{encodeLogEntry(e), m.encode(), encodeLease(l), encodeUsage(u)} {
		for n := range len(v) {
			decodeLogEntry(1, v[:n])
			decodeRecMeta(v[:n])
			decodeLease(v[:n])
			decodeUsage(v[:n])
		}
	}
	if _, err := decodeLogEntry(1, encodeLogEntry(e)[:5]); err == nil {
		t.Fatal("truncated log entry decoded")
	}
	if _, err := decodeRecMeta([]byte{9, 1, 0}); err == nil {
		t.Fatal("unknown version decoded")
	}
	got, err := decodeLease(encodeLease(l))
	if err != nil || got.Holder != l.Holder || got.Fence != l.Fence || !got.Expires.Equal(l.Expires) {
		t.Fatalf("lease round trip: %+v, %v", got, err)
	}
	gm, err := decodeRecMeta(m.encode())
	if err != nil || gm.seq != 7 || gm.snapSeq != 5 || gm.snapBytes != 100 || gm.tailBytes != 20 || gm.tailEntries != 2 || !gm.heads.Equal(e.Heads) {
		t.Fatalf("record meta round trip: %+v %v", gm, err)
	}
	if gu, err := decodeUsage(encodeUsage(u)); err != nil || gu != u {
		t.Fatalf("usage round trip: %+v %v", gu, err)
	}
}

// A record the store does not hold is relay.ErrNotFound, named with its
// collection, whether or not the text is formatted when it is made.
func TestRecordNotFound(t *testing.T) {
	s := bsOpen(t, t.TempDir(), nil)
	_, err := s.Record(context.Background(), bsColl, "missing")
	if !errors.Is(err, relay.ErrNotFound) {
		t.Fatalf("Record of a missing record: %v, want ErrNotFound", err)
	}
	if want := `record "missing" in app1/notes: ` + relay.ErrNotFound.Error(); err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}
}
