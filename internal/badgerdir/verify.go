package badgerdir

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
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
	m, err := readManifest(dir)
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
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), 4, len(ids)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(ids); i = int(next.Add(1) - 1) {
				errs[i] = verifyListed(dir, ids[i], m.Tables[ids[i]])
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func verifyListed(dir string, id uint64, tm badger.TableManifest) error {
	if tm.KeyID != 0 {
		// Ferry never encrypts; Badger refuses such a table itself, for
		// want of its key.
		return nil
	}
	path := table.NewFilename(id, dir)
	if _, err := os.Stat(path); os.IsNotExist(err) {
		return &DamagedError{Dir: dir, Untouched: true, Problem: fmt.Sprintf("table %s, listed in its MANIFEST, is missing", filepath.Base(path))}
	}
	if err := verifyTable(path, tm.Compression); err != nil {
		return &DamagedError{Dir: dir, Untouched: true, Problem: fmt.Sprintf("table %s is damaged", filepath.Base(path)), Err: err}
	}
	return nil
}

func readManifest(dir string) (m badger.Manifest, err error) {
	f, err := os.Open(filepath.Join(dir, badger.ManifestFilename))
	if err != nil {
		return m, err
	}
	defer f.Close()
	defer recoverTo(&err)
	// Ferry's stores use Badger's default external magic, 0.
	m, _, err = badger.ReplayManifestFile(f, 0, badger.DefaultOptions(dir).WithLogger(nil))
	return m, err
}

// verifyTable opens the table read-only as Badger would and verifies the
// checksum of its index and of every block. Badger panics on some damage;
// the panic is returned as an error.
func verifyTable(path string, c options.CompressionType) (err error) {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	mf, err := z.OpenMmapFileUsing(f, 0, false)
	if err != nil {
		f.Close()
		return err
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
		return err
	}
	part = "its blocks"
	return t.VerifyChecksum()
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
