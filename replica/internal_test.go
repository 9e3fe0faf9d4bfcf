package replica

import "github.com/dgraph-io/badger/v4"

type badgerTxn = badger.Txn

// openRaw opens a folder as a plain Badger store, bypassing Ferry's checks.
func openRaw(dir string) (*badger.DB, error) {
	return badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
}
