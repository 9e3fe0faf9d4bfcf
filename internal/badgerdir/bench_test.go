package badgerdir

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// What verifying checksums costs. A store of 10,000 records of 300
// incompressible bytes (Automerge documents are compressed already), and
// one of 20 values of 1.5 MiB, which Badger keeps in its value log:
//
//	go test -run - -bench . ./internal/badgerdir

const benchRecords = 10_000

func benchFill(b *testing.B, n, size int) string {
	b.Helper()
	dir := b.TempDir()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithSyncWrites(false))
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	wb := db.NewWriteBatch()
	for i := range n {
		v := make([]byte, size)
		for j := range v {
			v[j] = byte(rng.Uint32())
		}
		if err := wb.Set(benchKey(i), v); err != nil {
			b.Fatal(err)
		}
	}
	if err := wb.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := db.Close(); err != nil {
		b.Fatal(err)
	}
	return dir
}

func benchKey(i int) []byte { return fmt.Appendf(nil, "r/items\x00%08d", i) }

func benchSize(b *testing.B, dir, suffix string) int64 {
	var n int64
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		if strings.HasSuffix(e.Name(), suffix) {
			fi, err := os.Stat(filepath.Join(dir, e.Name()))
			if err != nil {
				b.Fatal(err)
			}
			n += fi.Size()
		}
	}
	return n
}

// BenchmarkVerifyStore is what Prepare adds to every open: reading and
// checking every table.
func BenchmarkVerifyStore(b *testing.B) {
	dir := benchFill(b, benchRecords, 300)
	b.SetBytes(benchSize(b, dir, ".sst"))
	for b.Loop() {
		if err := verifyStore(dir); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpen is a whole open of the same store, with and without
// Prepare's verification.
func BenchmarkOpen(b *testing.B) {
	dir := benchFill(b, benchRecords, 300)
	for _, verify := range []bool{false, true} {
		b.Run(fmt.Sprintf("verify=%v", verify), func(b *testing.B) {
			for b.Loop() {
				if verify {
					if _, err := Prepare(dir); err != nil {
						b.Fatal(err)
					}
				}
				db, err := Open(badger.DefaultOptions(dir).WithLogger(nil))
				if err != nil {
					b.Fatal(err)
				}
				if err := Close(db); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReadRecords reads all 10,000 records with Badger's block cache
// shrunk to one block, so nearly every read decodes its block from the
// file: the worst case for block checksums, which Badger verifies only on
// a cache miss.
func BenchmarkReadRecords(b *testing.B) {
	dir := benchFill(b, benchRecords, 300)
	for _, mode := range []options.ChecksumVerificationMode{options.NoVerification, options.OnBlockRead} {
		name := map[options.ChecksumVerificationMode]string{options.NoVerification: "NoVerification", options.OnBlockRead: "OnBlockRead"}[mode]
		b.Run(name, func(b *testing.B) {
			db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).
				WithBlockCacheSize(1 << 10).WithChecksumVerificationMode(mode))
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			for b.Loop() {
				benchRead(b, db, benchRecords)
			}
			b.ReportMetric(float64(benchRecords*b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// BenchmarkReadValueLog reads 20 values of 1.5 MiB from the value log, with
// and without their checksums verified.
func BenchmarkReadValueLog(b *testing.B) {
	const n, size = 20, 3 << 19
	dir := benchFill(b, n, size)
	for _, verify := range []bool{false, true} {
		b.Run(fmt.Sprintf("verify=%v", verify), func(b *testing.B) {
			db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithVerifyValueChecksum(verify))
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			b.SetBytes(n * size)
			for b.Loop() {
				benchRead(b, db, n)
			}
		})
	}
}

func benchRead(b *testing.B, db *badger.DB, n int) {
	err := db.View(func(txn *badger.Txn) error {
		for i := range n {
			item, err := txn.Get(benchKey(i))
			if err != nil {
				return err
			}
			// Copied, as the stores do.
			if _, err := item.ValueCopy(nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}
