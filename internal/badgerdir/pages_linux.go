//go:build linux

package badgerdir

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/dgraph-io/badger/v4"
)

// Release drops from resident memory the pages of every table of the
// store that it can tell stays mapped meanwhile, and returns how many
// bytes of mappings it advised (not all of them were resident). The
// caller keeps the store open until it returns.
//
// Releasing a range that the table no longer maps would be unsafe: Badger
// unmaps a table once a compaction replaced it and no read holds it, and
// the addresses could be mapped again at once as anonymous memory, which
// MADV_DONTNEED would zero. So Release first takes an iterator, which
// holds a reference on every table of every level (Badger unmaps a table
// only when its last reference goes), and releases only the tables
// listed both before and after taking it: Badger never moves a table
// between levels and never adds one back once removed, so a table listed
// at both times was in its level throughout and the iterator holds it.
// A table written meanwhile is left for the next call.
func (p *TablePages) Release() (advised int64, err error) {
	if p == nil {
		return 0, nil
	}
	before := tableIDs(p.db)
	if len(before) == 0 {
		return 0, nil
	}
	txn := p.db.NewTransaction(false)
	defer txn.Discard()
	it := txn.NewIterator(badger.IteratorOptions{})
	defer it.Close()
	held := map[uint64]bool{}
	for id := range tableIDs(p.db) {
		if before[id] {
			held[id] = true
		}
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	for _, m := range tableMappings(maps, p.dir) {
		if !held[m.id] {
			continue
		}
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, m.start, m.end-m.start, syscall.MADV_DONTNEED); errno != 0 {
			return advised, errno
		}
		advised += int64(m.end - m.start)
	}
	return advised, nil
}

func tableIDs(db *badger.DB) map[uint64]bool {
	ids := map[uint64]bool{}
	for _, t := range db.Tables() {
		ids[t.ID] = true
	}
	return ids
}

// mapping is one line of /proc/self/maps that maps a table file.
type mapping struct {
	start, end uintptr
	id         uint64
}

// tableMappings lists the mappings of dir's table files in maps, the
// text of /proc/self/maps: "start-end perms offset dev inode path".
func tableMappings(maps []byte, dir string) []mapping {
	var out []mapping
	for line := range bytes.Lines(maps) {
		line = bytes.TrimRight(line, "\n")
		// The path is what follows the first five fields, spaces and all.
		f := make([][]byte, 0, 5)
		rest := line
		for len(f) < 5 {
			rest = bytes.TrimLeft(rest, " ")
			field, after, ok := bytes.Cut(rest, []byte(" "))
			if !ok {
				break
			}
			f, rest = append(f, field), after
		}
		path := bytes.TrimLeft(rest, " ")
		if len(f) < 5 || len(path) == 0 || filepath.Dir(string(path)) != dir {
			continue
		}
		id, ok := tableID(filepath.Base(string(path)))
		if !ok {
			continue
		}
		lo, hi, ok := bytes.Cut(f[0], []byte("-"))
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(string(lo), 16, 64)
		end, err2 := strconv.ParseUint(string(hi), 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		out = append(out, mapping{start: uintptr(start), end: uintptr(end), id: id})
	}
	return out
}
