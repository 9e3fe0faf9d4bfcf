package badgerdir

import (
	"path/filepath"
	"sync"

	"github.com/dgraph-io/badger/v4"
)

// TablePages drops a store's table pages from the process's resident
// memory.
//
// Badger v4 maps each table file whole (a shared mapping) and writes and
// reads it through that mapping: every table it writes, every block it
// reads, stays resident in the process until the kernel runs short of
// memory, so the process's RSS grows with the store (some 30 MiB of
// tables at 100,000 small records), and Badger has no option to read
// tables otherwise. Release tells the kernel the process does not need
// those pages now (madvise MADV_DONTNEED). Nothing is lost: the mapping
// is shared, so its pages stay in the page cache (and on disk) and a
// read that needs one again maps it back from there.
type TablePages struct {
	db  *badger.DB
	dir string // the store's folder, as the kernel names its files

	mu      sync.Mutex // held by Release and Stop
	stopped bool
}

// Stop makes every later Release do nothing, once a Release under way
// has returned. The store's owner calls it before closing the store:
// closing unmaps the tables.
func (p *TablePages) Stop() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
}

// NewTablePages returns what releases the pages of db's tables, db being
// opened on dir. For a store in memory it returns nil, whose Release does
// nothing.
func NewTablePages(db *badger.DB, dir string) *TablePages {
	if db.Opts().InMemory || dir == "" {
		return nil
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	return &TablePages{db: db, dir: dir}
}
