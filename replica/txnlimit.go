package replica

import "github.com/dgraph-io/badger/v4"

// Badger refuses a transaction whose writes pass 15% of a memtable,
// counting each key and each value under its value threshold; a value at
// or above the threshold is written to the value log beside and counts as
// a pointer (a dozen bytes). A record's write holds up to a few large
// values (its change or snapshot, its read model, rewritten whole on every
// change, and the relay's changes a merge hook held back), each no larger
// than the relay's max_record allows and its read model larger still. So
// that the largest record fits one transaction whatever the memtables,
// values past an eighth of the limit go to the value log: a record's
// write then counts at most a few eighths of it, and its index entries
// (at most about 1.3 KiB each, see indexValueBound) the rest. Values that
// large are rare (a read model past 150 KiB with 8 MiB memtables); the
// value log they leave behind when rewritten is reclaimed by the
// value-log GC (Options.GCInterval).
//
// A store in memory keeps every value in its memtables, and Badger
// refuses a value past the threshold there: it keeps Badger's threshold
// (1 MiB), within the limit.

// valueThreshold returns the value threshold of a device's Badger store
// with options bo.
func valueThreshold(bo badger.Options) int64 {
	limit := 15 * bo.MemTableSize / 100 // Badger's limit on one transaction
	if bo.InMemory {
		return min(1<<20, limit)
	}
	return min(1<<20, limit/8)
}
