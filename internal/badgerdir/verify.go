package badgerdir

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2/z"
)

// Damage that Badger does not report on its own, and how it is caught:
//
//   - A table (.sst) cut short makes Badger panic while opening it, on a
//     goroutine of its own, where no caller can recover: the process dies.
//     A table with corrupt blocks opens, and its keys then read as missing
//     or garbled, or reads panic. So before Badger opens a store, every
//     table its MANIFEST lists is opened here, on the caller's goroutine,
//     and all its block checksums verified.
//   - After that, Open turns on Badger's checksums for every block read
//     from disk and every value read from the value log. A block that
//     fails its checksum reads as missing keys, never garbled ones. A value
//     that fails its checksum, or lies past the end of a cut value log,
//     reads as zero bytes without an error (Badger only logs it): the
//     stores check what they read against what they expect (a replica's
//     record sizes and heads, the relay's value headers).

// verifyStore checks the MANIFEST, the key registry and every table the
// MANIFEST lists. The caller holds the folder lock.
func verifyStore(dir string) error {
	m, cut, err := readManifest(dir)
	if err != nil {
		return &DamagedError{Dir: dir, Untouched: true, Problem: "its MANIFEST (Badger's list of the store's tables) is unreadable", Err: err}
	}
	// Badger writes its key registry even when nothing is encrypted, and
	// will not open without a readable one.
	kr, err := badger.OpenKeyRegistry(badger.KeyRegistryOptions{Dir: dir, ReadOnly: true})
	if err != nil {
		return &DamagedError{Dir: dir, Untouched: true, Problem: "its KEYREGISTRY is unreadable", Err: err}
	}
	if err := kr.Close(); err != nil {
		return err
	}
	ids := make([]uint64, 0, len(m.Tables))
	for id := range m.Tables {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	// Verifying is bound by decoding blocks (about 500 MB/s a core), so
	// tables are checked a few at a time.
	errs := make([]error, len(ids))
	versions := make([]uint64, len(ids))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), 4, len(ids)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(ids); i = int(next.Add(1) - 1) {
				versions[i], errs[i] = verifyListed(dir, ids[i], m.Tables[ids[i]])
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	if cut {
		return checkCutManifest(dir, m, slices.Max(append(versions, 0)))
	}
	return nil
}

// verifyListed verifies a table the MANIFEST lists, and returns the
// newest version of a key it holds.
func verifyListed(dir string, id uint64, tm badger.TableManifest) (uint64, error) {
	if tm.KeyID != 0 {
		// Ferry never encrypts; Badger refuses such a table itself, for
		// want of its key.
		return 0, nil
	}
	path := table.NewFilename(id, dir)
	if _, err := os.Stat(path); os.IsNotExist(err) {
		return 0, &DamagedError{Dir: dir, Untouched: true, Problem: fmt.Sprintf("table %s, listed in its MANIFEST, is missing", filepath.Base(path))}
	}
	v, err := verifyTable(path, tm.Compression)
	if err != nil {
		return 0, &DamagedError{Dir: dir, Untouched: true, Problem: fmt.Sprintf("table %s is damaged", filepath.Base(path)), Err: err}
	}
	return v, nil
}

// readManifest replays the MANIFEST. cut reports that it ends in a partial
// entry, which Badger drops on open.
func readManifest(dir string) (m badger.Manifest, cut bool, err error) {
	f, err := os.Open(filepath.Join(dir, badger.ManifestFilename))
	if err != nil {
		return m, false, err
	}
	defer f.Close()
	defer recoverTo(&err)
	info, err := f.Stat()
	if err != nil {
		return m, false, err
	}
	// Ferry's stores use Badger's default external magic, 0.
	m, end, err := badger.ReplayManifestFile(f, 0, badger.DefaultOptions(dir).WithLogger(nil))
	return m, err == nil && end < info.Size(), err
}

// checkCutManifest refuses a MANIFEST that ends in a partial entry while
// the folder holds a table it does not list with writes newer than every
// listed table's (newest is the newest version the listed tables hold).
// Badger would drop the partial entry and delete the table; when the entry
// recorded a memtable's flush, the memtable's log is already gone, and the
// table is the only copy of those writes. Badger writes each entry with
// one write call and syncs it before acting on it, so a crash of the
// process almost never leaves a partial entry: the file was cut or its end
// lost. Unlisted tables whose writes are all older are what a compaction
// cut short leaves (their writes are in the tables it compacted, still
// listed), and a partial entry with no unlisted table changes no file:
// Badger's dropping it loses nothing that is on disk.
func checkCutManifest(dir string, m badger.Manifest, newest uint64) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	// Ferry's stores write tables with Badger's default compression.
	compression := badger.DefaultOptions(dir).Compression
	var unlisted []string
	for _, e := range entries {
		id, ok := tableID(e.Name())
		if _, listed := m.Tables[id]; !ok || listed {
			continue
		}
		// A table that does not open may hold anything.
		if v, err := verifyTable(filepath.Join(dir, e.Name()), compression); err != nil || v > newest {
			unlisted = append(unlisted, e.Name())
		}
	}
	if len(unlisted) == 0 {
		return nil
	}
	if len(unlisted) > 5 {
		unlisted = append(unlisted[:5], fmt.Sprintf("and %d more", len(unlisted)-5))
	}
	return &DamagedError{Dir: dir, Untouched: true, Problem: fmt.Sprintf(
		"its MANIFEST (Badger's list of the store's tables) is cut short, and tables it no longer lists hold writes no listed table holds (%s), which Badger would delete",
		strings.Join(unlisted, ", "))}
}

// tableID parses a table's file name, as Badger writes it.
func tableID(name string) (uint64, bool) {
	num, ok := strings.CutSuffix(name, ".sst")
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseUint(num, 10, 64)
	return id, err == nil
}

// verifyTable opens the table read-only as Badger would, verifies the
// checksum of its index and of every block, and returns the newest version
// of a key it holds. Badger panics on some damage; the panic is returned
// as an error.
func verifyTable(path string, c options.CompressionType) (maxVersion uint64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	mf, err := z.OpenMmapFileUsing(f, 0, false)
	if err != nil {
		f.Close()
		return 0, err
	}
	// Closed here, once: OpenTable closes it only when it verifies
	// checksums itself, which NoVerification rules out. The table is not
	// released with DecrRef, which deletes its file.
	defer mf.Close(-1)
	part := "its index"
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("reading %s: %w", part, panicError(p))
		}
	}()
	t, err := table.OpenTable(mf, table.Options{
		ReadOnly:    true,
		BlockSize:   badger.DefaultOptions("").BlockSize,
		Compression: c,
		ChkMode:     options.NoVerification,
	})
	if err != nil {
		return 0, err
	}
	part = "its blocks"
	return t.MaxVersion(), t.VerifyChecksum()
}

// recoverTo turns a panic into an error in *err. Deferred directly.
func recoverTo(err *error) {
	if p := recover(); p != nil {
		*err = panicError(p)
	}
}

// panicError describes a recovered panic on one line: Badger's panic
// values can be pages of debugging output.
func panicError(p any) error {
	s := strings.Join(strings.Fields(fmt.Sprint(p)), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return fmt.Errorf("Badger panicked: %s", s)
}

// openBadger opens a Badger store whose folder Prepare accepted (or an
// in-memory one). It verifies the checksum of every table block it reads from disk
// and of every value it reads from the value log, beyond what o asks. A
// panic inside Badger becomes an error wrapping ErrDamaged; Badger's
// deferred cleanup has released its folder lock by then, so the store can
// be opened again once the folder is repaired, though files Badger had
// mapped may stay mapped and goroutines it had started may linger.
func openBadger(o badger.Options) (db *badger.DB, err error) {
	if !o.InMemory {
		// Block checksums cost little against a read from disk (blocks
		// in Badger's cache were verified when read); value checksums
		// only touch values too big to live in the tables (over 1 MiB).
		o = o.WithChecksumVerificationMode(options.OnBlockRead).WithVerifyValueChecksum(true)
	}
	defer func() {
		if p := recover(); p != nil {
			db, err = nil, &DamagedError{Dir: o.Dir, Problem: "Badger failed opening it", Err: panicError(p)}
		}
	}()
	return badger.Open(o)
}

// Close closes db, turning a panic inside Badger into an error wrapping
// ErrDamaged.
func Close(db *badger.DB) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &DamagedError{Dir: db.Opts().Dir, Problem: "Badger failed closing it", Err: panicError(p)}
		}
	}()
	return db.Close()
}
