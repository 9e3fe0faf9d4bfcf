package badgerstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// A damaged memtable write-ahead log (.mem). Badger replays such a log
// up to its first entry that is cut off or fails its checksum and drops
// the rest (docs/operations.md, "What these checks cannot see"), so the
// store opens having lost a tail of its acknowledged appends. What must
// hold: the appends it keeps are a prefix of those made, in the order
// they were acknowledged (whole appends, never a hole), every kept entry
// and record reads back byte for byte, and what it lost is exactly what
// lay at or past the damage.

// mlSeed makes the appends and the damage of TestBadgerMemLogDamage.
const mlSeed = 20260

// mlOpts keeps the store's logs small enough to copy: a memtable of 1 MiB
// (its log is 2 MiB) and a value log of 1 MiB (2 MiB on disk).
var mlOpts = &Options{GCInterval: -1, memTableSize: 1 << 20, valueLogFileSize: 1 << 20}

// mlAppend is one acknowledged append.
type mlAppend struct {
	c       relay.Coll
	entries []relay.Entry
	last    uint64 // the sequence number of its last entry
	// end is where its bytes end in the newest .mem of the crash image,
	// measured as the end of the log's non-zero bytes once it returned:
	// the append's true end lies at most 4 bytes further (the last bytes
	// of a Badger log entry are its CRC, which may end in zeros). 0 for
	// an append that was in a table when the image was taken.
	end int64
}

// mlStore is a crash image and the appends acknowledged before it was taken.
type mlStore struct {
	img     string
	appends []mlAppend
	mem     string // the name of the image's newest .mem
	memEnd  int64  // where its non-zero bytes end
	inTable int    // appends[:inTable] are in tables, not in the .mem
}

var mlColls = []relay.Coll{
	{Tenant: "app1", Collection: "notes"},
	{Tenant: "app1", Collection: "tasks"},
	{Tenant: "app2", Collection: "notes"},
}

// mlBuild appends to a durable store in dir, closes it (its appends go
// into tables), reopens it, appends more, and copies the folder while the
// store is open: the copy holds the later appends only in the memtable's
// log, as a crash (or a power cut: every append was fsynced) would leave
// it.
func mlBuild(t *testing.T, dir string) *mlStore {
	t.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(mlSeed, 1))
	heads := map[relay.Coll]map[string]crdt.Heads{}
	for _, c := range mlColls {
		heads[c] = map[string]crdt.Heads{}
	}
	ms := &mlStore{}
	appendSome := func(s *Store, n int, measure bool) {
		for range n {
			c := mlColls[rng.IntN(len(mlColls))]
			var es []relay.Entry
			for range 1 + rng.IntN(3) {
				id := fmt.Sprintf("m%02d", rng.IntN(8))
				ch := make([]byte, 20+rng.IntN(700))
				for i := range ch {
					ch[i] = byte(rng.Uint32())
				}
				e := relay.Entry{Record: id, Base: heads[c][id], Changes: ch, Heads: crdt.Heads{crdt.Hash(sha256.Sum256(ch))}}
				heads[c][id] = e.Heads
				es = append(es, e)
			}
			last, err := s.Append(ctx, c, 0, time.Now(), es)
			if err != nil {
				t.Fatal(err)
			}
			a := mlAppend{c: c, entries: es, last: last}
			if measure {
				mem := mlNewestMem(t, dir)
				a.end = mlDataEnd(t, filepath.Join(dir, mem))
				if ms.mem == "" {
					ms.mem = mem
				}
				if mem != ms.mem {
					t.Fatalf("append %d went to %s, not %s: the memtable was flushed", len(ms.appends), mem, ms.mem)
				}
				if prev := ms.appends[len(ms.appends)-1].end; a.end <= prev {
					t.Fatalf("append %d left the log's data ending at %d, the one before at %d", len(ms.appends), a.end, prev)
				}
			}
			ms.appends = append(ms.appends, a)
		}
	}

	s, err := Open(dir, mlOpts)
	if err != nil {
		t.Fatal(err)
	}
	appendSome(s, 12, false)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ms.inTable = len(ms.appends)
	s, err = Open(dir, mlOpts)
	if err != nil {
		t.Fatal(err)
	}
	appendSome(s, 40, true)
	// Nothing writes now: the copy is what a crash at this moment leaves.
	ms.img = dir + ".crash"
	if err := copyFolder(dir, ms.img); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ms.memEnd = mlDataEnd(t, filepath.Join(ms.img, ms.mem))
	if last := ms.appends[len(ms.appends)-1].end; ms.memEnd != last {
		t.Fatalf("the image's %s ends at %d, the last append at %d", ms.mem, ms.memEnd, last)
	}
	return ms
}

// mlNewestMem is the name of dir's .mem with the highest number.
func mlNewestMem(t *testing.T, dir string) string {
	t.Helper()
	var mems []string
	for _, n := range dirNames(t, dir) {
		if strings.HasSuffix(n, ".mem") {
			mems = append(mems, n)
		}
	}
	if len(mems) == 0 {
		t.Fatalf("no .mem in %v", dirNames(t, dir))
	}
	// Badger numbers them %05d: longer names are newer.
	return slices.MaxFunc(mems, func(a, b string) int {
		if len(a) != len(b) {
			return len(a) - len(b)
		}
		return strings.Compare(a, b)
	})
}

// mlDataEnd is where the non-zero bytes of a preallocated log end.
func mlDataEnd(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(bytes.TrimRight(b, "\x00")))
}

// mlKeptRange is how many appends a log damaged from byte off on may
// keep: those in tables and those that surely end before off, and at
// most also the one whose end lies within 4 bytes of it.
func (ms *mlStore) keptRange(off int64) (lo, hi int) {
	lo, hi = ms.inTable, ms.inTable
	for _, a := range ms.appends[ms.inTable:] {
		if a.end+4 <= off {
			lo++
		}
		if a.end <= off {
			hi++
		}
	}
	return lo, hi
}

// mlCheck opens a damaged copy of the image and checks what it holds.
// It returns how many appends the store kept, or -1 if Open refused it.
func mlCheck(t *testing.T, ms *mlStore, dir string) int {
	t.Helper()
	ctx := context.Background()
	s, err := Open(dir, mlOpts)
	if err != nil {
		if !errors.Is(err, relay.ErrStoreDamaged) || !strings.Contains(err.Error(), dir) {
			t.Fatalf("Open = %v, want it to open or relay.ErrStoreDamaged naming the folder", err)
		}
		t.Logf("refused: %v", err)
		return -1
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()

	// Each collection's log is a run of whole appends from its first.
	kept := map[relay.Coll]int{} // appends kept, per collection
	for _, c := range mlColls {
		var want []relay.Entry
		var ends []uint64 // each append's last sequence number
		for _, a := range ms.appends {
			if a.c == c {
				want = append(want, a.entries...)
				ends = append(ends, a.last)
			}
		}
		log, err := s.Log(ctx, c, 0, 10_000)
		if err != nil {
			t.Fatalf("Log(%s/%s): %v", c.Tenant, c.Collection, err)
		}
		if len(log) > len(want) {
			t.Fatalf("%s/%s: log holds %d entries, %d were appended", c.Tenant, c.Collection, len(log), len(want))
		}
		for i, e := range log {
			w := want[i]
			if e.Seq != uint64(i+1) || e.Record != w.Record || !bytes.Equal(e.Changes, w.Changes) || !e.Heads.Equal(w.Heads) {
				t.Fatalf("%s/%s: log entry %d is seq %d, record %q, %d bytes of changes, heads %v; appended as seq %d, record %q, %d bytes, heads %v (changes equal: %v)",
					c.Tenant, c.Collection, i, e.Seq, e.Record, len(e.Changes), e.Heads, i+1, w.Record, len(w.Changes), w.Heads, bytes.Equal(e.Changes, w.Changes))
			}
		}
		head, err := s.Head(ctx, c)
		if err != nil {
			t.Fatalf("Head(%s/%s): %v", c.Tenant, c.Collection, err)
		}
		if head != uint64(len(log)) {
			t.Fatalf("%s/%s: head %d, but the log ends at entry %d", c.Tenant, c.Collection, head, len(log))
		}
		n, _ := slices.BinarySearch(ends, head)
		if head != 0 && (n == len(ends) || ends[n] != head) {
			t.Fatalf("%s/%s: head %d is inside an append (appends end at %v)", c.Tenant, c.Collection, head, ends)
		}
		if head != 0 {
			n++
		}
		kept[c] = n
	}

	// Across collections too, the appends kept are the first ones made:
	// one write-ahead log holds them all, in the order they were made.
	total := 0
	seen := map[relay.Coll]int{}
	for i, a := range ms.appends {
		seen[a.c]++
		in := seen[a.c] <= kept[a.c]
		if in && total != i {
			t.Fatalf("append %d (to %s/%s) was kept, but append %d (to %s/%s), made before it, was lost",
				i, a.c.Tenant, a.c.Collection, total, ms.appends[total].c.Tenant, ms.appends[total].c.Collection)
		}
		if in {
			total++
		}
	}

	// Every record reads back as the kept appends left it, and the
	// usage counts what they hold.
	usage := map[string]relay.Usage{}
	for _, c := range mlColls {
		docs, heads := map[string][]byte{}, map[string]crdt.Heads{}
		for _, a := range ms.appends[:total] {
			if a.c != c {
				continue
			}
			for _, e := range a.entries {
				docs[e.Record] = append(docs[e.Record], e.Changes...)
				heads[e.Record] = e.Heads
				u := usage[c.Tenant]
				u.Bytes += int64(len(e.Changes))
				usage[c.Tenant] = u
			}
		}
		u := usage[c.Tenant]
		u.Records += int64(len(docs))
		usage[c.Tenant] = u
		for i := range 8 {
			id := fmt.Sprintf("m%02d", i)
			doc, h, err := relay.Document(ctx, s, c, id)
			want, ok := docs[id]
			switch {
			case !ok:
				if !errors.Is(err, relay.ErrNotFound) {
					t.Fatalf("Document(%s/%s/%s) = %d bytes, %v, %v; no kept append wrote it", c.Tenant, c.Collection, id, len(doc), h, err)
				}
			case err != nil || !bytes.Equal(doc, want) || !h.Equal(heads[id]):
				t.Fatalf("Document(%s/%s/%s) = %d bytes, %v, %v; want %d bytes, %v (bytes equal: %v)",
					c.Tenant, c.Collection, id, len(doc), h, err, len(want), heads[id], bytes.Equal(doc, want))
			}
		}
		recs, err := s.Records(ctx, c, "", 100)
		if err != nil || len(recs) != len(docs) {
			t.Fatalf("Records(%s/%s) = %d records, %v; want %d", c.Tenant, c.Collection, len(recs), err, len(docs))
		}
	}
	for tenant, want := range usage {
		if got, err := s.Usage(ctx, tenant); err != nil || got != want {
			t.Fatalf("Usage(%s) = %+v, %v; want %+v", tenant, got, err, want)
		}
	}

	// The store goes on from what it kept.
	c := mlColls[0]
	next, err := s.Append(ctx, c, 0, time.Now(), []relay.Entry{bsEntry("after", nil, "1")})
	if err != nil || next != uint64(ms.entriesTo(c, total))+1 {
		t.Fatalf("append after reopening = %d, %v; want %d", next, err, ms.entriesTo(c, total)+1)
	}
	return total
}

// entriesTo counts the entries the first n appends made to c.
func (ms *mlStore) entriesTo(c relay.Coll, n int) int {
	k := 0
	for _, a := range ms.appends[:n] {
		if a.c == c {
			k += len(a.entries)
		}
	}
	return k
}

func mlCut(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// mlOverwrite overwrites n bytes of path at off with random ones and
// returns where the first byte it changed is.
func mlOverwrite(t *testing.T, rng *rand.Rand, path string, off int64, n int) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := make([]byte, n)
	if _, err := f.ReadAt(old, off); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		if b[i] != old[i] {
			return off + int64(i)
		}
	}
	t.Fatalf("overwriting %d bytes at %d changed none", n, off)
	return 0
}

// TestBadgerMemLogDamage damages the newest memtable log of a crash
// image of a relay store (cut at several points, or 16 bytes overwritten
// in its middle) and reopens it: see mlCheck for what must hold. Each
// damage from byte off on must keep exactly the appends that end before
// off (give or take the one within 4 bytes of it; see mlAppend.end).
func TestBadgerMemLogDamage(t *testing.T) {
	ms := mlBuild(t, filepath.Join(t.TempDir(), "store"))
	inMem := len(ms.appends) - ms.inTable
	t.Logf("seed %d: %d appends in tables, %d in %s (%d bytes of data)", mlSeed, ms.inTable, inMem, ms.mem, ms.memEnd)
	rng := rand.New(rand.NewPCG(mlSeed, 2))

	type damage struct {
		name string
		// do damages the log at path and returns where the damage
		// starts: every byte before it is as written.
		do func(path string) int64
	}
	cut := func(off int64) damage {
		return damage{fmt.Sprintf("cut at %d", off), func(p string) int64 { mlCut(t, p, off); return off }}
	}
	var ds []damage
	ds = append(ds, damage{"intact", func(string) int64 { return ms.memEnd + 4 }})
	// Emptied (Prepare removes an empty log), and just after its 20-byte
	// header: every append in the log is lost. Cut inside the header, see
	// the "cut inside the header" subtest below.
	ds = append(ds, cut(0), cut(20))
	// At an append's end (it is kept, the next lost) and a byte before
	// it (it is lost).
	for range 2 {
		a := ms.appends[ms.inTable+rng.IntN(inMem-1)]
		ds = append(ds, cut(a.end+4), cut(a.end-1))
	}
	for range 2 {
		ds = append(ds, cut(20+rng.Int64N(ms.memEnd-20)))
	}
	for range 3 {
		off := ms.memEnd/4 + rng.Int64N(ms.memEnd/2)
		ds = append(ds, damage{fmt.Sprintf("16 bytes overwritten at %d", off), func(p string) int64 { return mlOverwrite(t, rng, p, off, 16) }})
	}

	for _, d := range ds {
		t.Run(d.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "store")
			if err := copyFolder(ms.img, dir); err != nil {
				t.Fatal(err)
			}
			lo, hi := ms.keptRange(d.do(filepath.Join(dir, ms.mem)))
			if d.name != "intact" && hi == len(ms.appends) {
				t.Fatal("the damage spares every append")
			}
			switch n := mlCheck(t, ms, dir); {
			case n < 0:
				t.Log("Open refused the store")
			case n < lo || n > hi:
				t.Errorf("%d appends kept, want %d to %d (of %d; %d of them in tables)", n, lo, hi, len(ms.appends), ms.inTable)
			default:
				t.Logf("opened, %d of %d appends kept", n, len(ms.appends))
			}
		})
	}
	// A log cut to 1..19 bytes (inside its header) ended the process:
	// probeStore's read-only open (files.go) replayed it, Badger's
	// logFile.Truncate then asserted the log was not read-only, and its
	// failed assertion is log.Fatalf, which no recover catches. A
	// read-only open now refuses such a store, and the read-write open
	// repairs it.
	t.Run("cut inside the header", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "store")
		if err := copyFolder(ms.img, dir); err != nil {
			t.Fatal(err)
		}
		mlCut(t, filepath.Join(dir, ms.mem), 10)
		if n := mlCheck(t, ms, dir); n >= 0 && n != ms.inTable {
			t.Errorf("%d appends kept, want %d", n, ms.inTable)
		}
	})
}
