package replica_test

// Damaged stores, for real: a durable store is built on disk, closed (or
// copied while open, as a crash would leave it), damaged the way disks and
// careless copies damage files, and reopened. Either Open refuses it with
// ErrDamaged and leaves every file as it was, or every record reads back
// as written or fails with ErrCorrupt naming it. Never an empty record,
// never a missing field, never a panic.

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/replica"
)

// dmgEnvSeed reproduces one round of the damage tests.
const dmgEnvSeed = "FERRY_DAMAGE_SEED"

const (
	dmgColl    = "items"
	dmgRecords = 200
	dmgBig     = 3       // records over Badger's 1 MiB value threshold, stored in the value log
	dmgBigSize = 2 << 20 // their padding, in base64 of random bytes
)

type dmgRec struct {
	N    int64  `ferry:"n"`
	Name string `ferry:"name"`
	Pad  string `ferry:"pad"`
}

// dmgSeeds returns the random seed of each run: the one in dmgEnvSeed, or n fixed ones.
func dmgSeeds(t *testing.T, n int) []uint64 {
	if s := os.Getenv(dmgEnvSeed); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", dmgEnvSeed, s, err)
		}
		return []uint64{v}
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(i + 1)
	}
	return out
}

// dmgStore is a durable store on disk and what it must hold.
type dmgStore struct {
	dir  string
	want map[string]dmgRec
	// order lists records written after the last Close, in write order:
	// a cut write-ahead log may lose a tail of them, as a crash would.
	order []string
}

// dmgBuild writes a store in dir: small records, some edited often enough
// to be folded into snapshots, and a few big ones whose bytes live in the
// value log. With crashImage, further records are written after a reopen
// and the folder is copied while the store is open, so the copy holds them
// only in Badger's write-ahead log (.mem), as after a crash.
func dmgBuild(t *testing.T, dir string, crashImage bool) *dmgStore {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	s := &dmgStore{dir: dir, want: map[string]dmgRec{}}
	// Relaxed: the copy below reads what Badger wrote through the page
	// cache, synced or not, and Close syncs everything.
	o := &replica.Options{CompactAfter: 4, GCInterval: -1, Relaxed: true, MaxRecordBytes: 8 << 20}
	r, err := replica.Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	c := r.Collection(dmgColl)
	for i := range dmgRecords {
		id := fmt.Sprintf("r%04d", i)
		rec := dmgRec{N: int64(i), Name: fmt.Sprintf("record %d", i), Pad: dmgPad(rng, 50+rng.IntN(400))}
		if i < dmgBig {
			rec.Pad = dmgPad(rng, dmgBigSize)
		}
		if err := c.Put(id, rec); err != nil {
			t.Fatal(err)
		}
		// Some records get chunks; every fourth write folds them into a
		// snapshot.
		for range rng.IntN(7) {
			rec.N += 1000
			if err := c.Update(id, func(d *crdt.Doc) error { return d.Set(crdt.Path{"n"}, rec.N) }); err != nil {
				t.Fatal(err)
			}
		}
		s.want[id] = rec
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if !crashImage {
		return s
	}
	r, err = replica.Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	c = r.Collection(dmgColl)
	for i := range 100 {
		id := fmt.Sprintf("w%04d", i)
		rec := dmgRec{N: int64(i), Name: fmt.Sprintf("logged %d", i), Pad: dmgPad(rng, 100)}
		if err := c.Put(id, rec); err != nil {
			t.Fatal(err)
		}
		s.want[id] = rec
		s.order = append(s.order, id)
	}
	// Nothing writes now: the copy is what a crash (of the process, or a
	// power loss had the writes been synced) at this moment would leave.
	img := dir + ".crash"
	dmgCopyDir(t, dir, img)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	s.dir = img
	return s
}

func dmgPad(rng *rand.Rand, n int) string {
	b := make([]byte, n*3/4+1)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return base64.StdEncoding.EncodeToString(b)[:n]
}

// dmgCopyDir copies a store folder, keeping holes: Badger preallocates a
// 2 GiB value log.
func dmgCopyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	es, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		dmgEachRange(t, filepath.Join(from, e.Name()), func(src *os.File, size int64, r [2]int64) {
			dst, err := os.OpenFile(filepath.Join(to, e.Name()), os.O_WRONLY|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			defer dst.Close()
			if _, err := io.Copy(io.NewOffsetWriter(dst, r[0]), io.NewSectionReader(src, r[0], r[1]-r[0])); err != nil {
				t.Fatal(err)
			}
			if err := dst.Truncate(size); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// dmgEachRange calls fn on each part of the file that holds data, and once
// with an empty range for a file that holds none.
func dmgEachRange(t *testing.T, path string, fn func(f *os.File, size int64, r [2]int64)) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := dmgSize(t, path)
	rs, err := dmgDataRanges(f, size)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) == 0 {
		rs = [][2]int64{{0, 0}}
	}
	for _, r := range rs {
		fn(f, size, r)
	}
}

// dmgFiles returns the folder's files with the first kind's suffix, largest
// first.
func dmgFiles(t *testing.T, dir, suffix string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		if strings.HasSuffix(e.Name(), suffix) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	slices.SortFunc(out, func(a, b string) int { return int(dmgSize(t, b) - dmgSize(t, a)) })
	if len(out) == 0 {
		t.Fatalf("no %s file in %s", suffix, dir)
	}
	return out
}

func dmgSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// dmgDataEnd is where the non-zero bytes of a preallocated file end.
func dmgDataEnd(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(bytes.TrimRight(b, "\x00")))
}

func dmgTruncate(t *testing.T, path string, size int64) {
	t.Helper()
	t.Logf("cut %s from %d to %d bytes", filepath.Base(path), dmgSize(t, path), size)
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

func dmgOverwrite(t *testing.T, rng *rand.Rand, path string, off int64, n int) {
	t.Helper()
	t.Logf("overwrite %d bytes of %s at %d (of %d)", n, filepath.Base(path), off, dmgSize(t, path))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

var dmgHashSeed = maphash.MakeSeed()

// dmgListing is each file's size and a hash of its content.
func dmgListing(t *testing.T, dir string) map[string]string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range es {
		var h maphash.Hash
		h.SetSeed(dmgHashSeed)
		var size int64
		dmgEachRange(t, filepath.Join(dir, e.Name()), func(f *os.File, sz int64, r [2]int64) {
			size = sz
			fmt.Fprint(&h, r)
			if _, err := io.Copy(&h, io.NewSectionReader(f, r[0], r[1]-r[0])); err != nil {
				t.Fatal(err)
			}
		})
		out[e.Name()] = fmt.Sprintf("%d bytes, hash %x", size, h.Sum64())
	}
	return out
}

// dmgCheck reopens a damaged store. A refusal must be ErrDamaged and leave
// every file as it was; an open store must give every record as written,
// or ErrCorrupt naming it. Records in s.order may be missing only as a
// tail (a cut write-ahead log loses its end, as a crash does). It reports
// whether Open refused.
func dmgCheck(t *testing.T, s *dmgStore) (refused bool) {
	t.Helper()
	before := dmgListing(t, s.dir)
	r, err := replica.Open(s.dir, &replica.Options{GCInterval: -1})
	if err != nil {
		if !errors.Is(err, replica.ErrDamaged) {
			t.Fatalf("Open refused the damaged store without ErrDamaged: %v", err)
		}
		t.Logf("Open: %v", err)
		if after := dmgListing(t, s.dir); !maps.Equal(before, after) {
			t.Fatalf("a refused Open changed the folder:\nbefore %v\nafter  %v", before, after)
		}
		return true
	}
	defer func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	c := r.Collection(dmgColl)
	lost := map[string]bool{}
	corrupt := 0
	for _, id := range slices.Sorted(maps.Keys(s.want)) {
		var got dmgRec
		err := c.Get(id, &got)
		switch {
		case errors.Is(err, replica.ErrCorrupt):
			if !strings.Contains(err.Error(), dmgColl+"/"+id) {
				t.Errorf("ErrCorrupt does not name %s/%s: %v", dmgColl, id, err)
			}
			if corrupt == 0 {
				t.Logf("Get(%s): %v", id, err)
			}
			corrupt++
		case errors.Is(err, replica.ErrNotFound) && slices.Contains(s.order, id):
			lost[id] = true
		case err != nil:
			t.Errorf("Get(%s): %v", id, err)
		case got != s.want[id]:
			t.Errorf("Get(%s) read back wrong: n=%d name=%q pad %d bytes, want n=%d name=%q pad %d bytes",
				id, got.N, got.Name, len(got.Pad), s.want[id].N, s.want[id].Name, len(s.want[id].Pad))
		}
	}
	// What a cut log loses is a tail of what was written.
	for i, id := range s.order {
		if lost[id] && i+1 < len(s.order) && !lost[s.order[i+1]] {
			t.Errorf("%s is lost but %s, written after it, is not", id, s.order[i+1])
		}
	}
	// A scan fails with ErrCorrupt or lists every record intact.
	recs, err := collect(c.Scan(replica.ScanOptions{}))
	switch {
	case errors.Is(err, replica.ErrCorrupt):
	case err != nil:
		t.Errorf("Scan: %v", err)
	default:
		if len(recs) != len(s.want)-len(lost) {
			t.Errorf("Scan listed %d records, want %d", len(recs), len(s.want)-len(lost))
		}
		for _, rec := range recs {
			if len(rec.Fields) != 3 {
				t.Errorf("Scan: %s has fields %v, want n, name and pad", rec.ID, slices.Sorted(maps.Keys(rec.Fields)))
			}
		}
	}
	t.Logf("opened: %d records corrupt, %d of the last %d writes lost", corrupt, len(lost), len(s.order))
	return false
}

// dmgRound copies base, damages the copy with damage, and checks it.
func dmgRound(t *testing.T, base *dmgStore, seed uint64, damage func(t *testing.T, rng *rand.Rand, dir string)) bool {
	t.Helper()
	t.Logf("%s=%d", dmgEnvSeed, seed)
	dir := filepath.Join(t.TempDir(), "store")
	dmgCopyDir(t, base.dir, dir)
	s := *base
	s.dir = dir
	damage(t, rand.New(rand.NewPCG(seed, 7)), dir)
	return dmgCheck(t, &s)
}

// Point by point: a cut value log, a corrupt table, a cut table and a cut
// write-ahead log. Each round is reproducible with FERRY_DAMAGE_SEED.
func TestDamagedStore(t *testing.T) {
	closed := dmgBuild(t, filepath.Join(t.TempDir(), "closed"), false)
	if vlog := dmgFiles(t, closed.dir, ".vlog")[0]; dmgSize(t, vlog) < dmgBigSize {
		t.Fatalf("the value log holds %d bytes: the big records are not in it", dmgSize(t, vlog))
	}
	crashed := dmgBuild(t, filepath.Join(t.TempDir(), "crashed"), true)

	t.Run("vlog cut", func(t *testing.T) {
		for _, seed := range dmgSeeds(t, 4) {
			dmgRound(t, closed, seed, func(t *testing.T, rng *rand.Rand, dir string) {
				vlog := dmgFiles(t, dir, ".vlog")[0]
				dmgTruncate(t, vlog, 20+rng.Int64N(dmgSize(t, vlog)-20))
			})
		}
	})
	t.Run("sst corrupt", func(t *testing.T) {
		for _, seed := range dmgSeeds(t, 6) {
			refused := dmgRound(t, closed, seed, func(t *testing.T, rng *rand.Rand, dir string) {
				sst := dmgFiles(t, dir, ".sst")[0]
				size := dmgSize(t, sst)
				dmgOverwrite(t, rng, sst, size/4+rng.Int64N(size/2), 64)
			})
			if !refused {
				t.Error("a table with 64 corrupt bytes was opened")
			}
		}
	})
	t.Run("sst cut", func(t *testing.T) {
		for _, seed := range dmgSeeds(t, 4) {
			refused := dmgRound(t, closed, seed, func(t *testing.T, rng *rand.Rand, dir string) {
				sst := dmgFiles(t, dir, ".sst")[0]
				dmgTruncate(t, sst, rng.Int64N(dmgSize(t, sst)))
			})
			if !refused {
				t.Error("a cut table was opened")
			}
		}
	})
	t.Run("mem cut", func(t *testing.T) {
		for _, seed := range dmgSeeds(t, 4) {
			dmgRound(t, crashed, seed, func(t *testing.T, rng *rand.Rand, dir string) {
				mem := dmgFiles(t, dir, ".mem")[0]
				dmgTruncate(t, mem, rng.Int64N(dmgDataEnd(t, mem)))
			})
		}
	})
	// Badger replays a write-ahead log up to its first entry that fails
	// its checksum and drops the rest: a tail of the writes is lost, as in
	// a crash, and nothing else. See docs/operations.md for why this is
	// not detected.
	t.Run("mem corrupt", func(t *testing.T) {
		for _, seed := range dmgSeeds(t, 4) {
			dmgRound(t, crashed, seed, func(t *testing.T, rng *rand.Rand, dir string) {
				mem := dmgFiles(t, dir, ".mem")[0]
				end := dmgDataEnd(t, mem)
				dmgOverwrite(t, rng, mem, end-64-rng.Int64N(end/2), 16)
			})
		}
	})
}

// dmgSmall writes a few records into a durable store and closes it.
func dmgSmall(t *testing.T) (dir, id string, want map[string]dmgRec) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "store")
	r, err := replica.Open(dir, &replica.Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	c := r.Collection(dmgColl)
	want = map[string]dmgRec{}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 50 {
		id := fmt.Sprintf("r%04d", i)
		want[id] = dmgRec{N: int64(i), Name: id, Pad: dmgPad(rng, 200)}
		if err := c.Put(id, want[id]); err != nil {
			t.Fatal(err)
		}
	}
	id = r.ID()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, id, want
}

// dmgRefusedThenRestored damages a closed store, checks that Open refuses
// it with ErrDamaged and changes nothing, then puts the files back and
// checks that the same store, with the same ID and records, opens in this
// same process (nothing was left holding the folder's lock).
func dmgRefusedThenRestored(t *testing.T, damage func(dir string)) {
	dir, id, want := dmgSmall(t)
	backup := filepath.Join(t.TempDir(), "backup")
	dmgCopyDir(t, dir, backup)
	damage(dir)
	before := dmgListing(t, dir)
	_, err := replica.Open(dir, nil)
	if !errors.Is(err, replica.ErrDamaged) {
		t.Fatalf("Open = %v, want ErrDamaged", err)
	}
	if !strings.Contains(err.Error(), dir) {
		t.Errorf("the error does not name the folder: %v", err)
	}
	t.Log(err)
	if after := dmgListing(t, dir); !maps.Equal(before, after) {
		t.Fatalf("a refused Open changed the folder:\nbefore %v\nafter  %v", before, after)
	}

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	dmgCopyDir(t, backup, dir)
	r, err := replica.Open(dir, nil)
	if err != nil {
		t.Fatalf("Open after restoring the folder: %v", err)
	}
	defer r.Close()
	if r.ID() != id {
		t.Errorf("restored replica has ID %s, want %s", r.ID(), id)
	}
	c := r.Collection(dmgColl)
	for id, w := range want {
		var got dmgRec
		if err := c.Get(id, &got); err != nil || got != w {
			t.Fatalf("Get(%s) after restoring = %+v, %v", id, got, err)
		}
	}
}

// A store folder that lost its MANIFEST still holds its records: it is
// refused, never emptied into a new replica.
func TestOpenRefusesLostManifest(t *testing.T) {
	dmgRefusedThenRestored(t, func(dir string) {
		if err := os.Remove(filepath.Join(dir, "MANIFEST")); err != nil {
			t.Fatal(err)
		}
	})
}

// A MANIFEST cut short lost the entry recording the flush of the store's
// only table, and Badger deleted the table as unlisted: the store opened
// with no error and no records. It must be refused instead.
func TestOpenRefusesCutManifest(t *testing.T) {
	dmgRefusedThenRestored(t, func(dir string) {
		m := filepath.Join(dir, "MANIFEST")
		dmgTruncate(t, m, dmgSize(t, m)-8)
	})
}

// A table cut short made Badger panic on a goroutine of its own, killing
// the process; Open must return ErrDamaged instead.
func TestOpenRefusesCutTable(t *testing.T) {
	dmgRefusedThenRestored(t, func(dir string) {
		sst := dmgFiles(t, dir, ".sst")[0]
		dmgTruncate(t, sst, dmgSize(t, sst)*2/3)
	})
}

// BenchmarkLoadRecords loads 10,000 records from a reopened store with a
// document cache of one, so each Get reads the record from Badger (with
// its checksums) and checks it against its bookkeeping: the read path
// this checking slows, if anything does.
func BenchmarkLoadRecords(b *testing.B) {
	const n = 10_000
	dir := filepath.Join(b.TempDir(), "store")
	r, err := replica.Open(dir, &replica.Options{Relaxed: true, GCInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	var ids []string
	for len(ids) < n {
		err := r.Write(func(tx *replica.Tx) error {
			for range 500 {
				id, err := tx.Insert(dmgColl, dmgRec{N: int64(len(ids)), Name: "record", Pad: dmgPad(rng, 200)})
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := r.Close(); err != nil {
		b.Fatal(err)
	}
	r, err = replica.Open(dir, &replica.Options{CacheBytes: 1, GCInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	c := r.Collection(dmgColl)
	var rec dmgRec
	for b.Loop() {
		for _, id := range ids {
			if err := c.Get(id, &rec); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
}
