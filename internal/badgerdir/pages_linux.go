//go:build linux

package badgerdir

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/dgraph-io/badger/v4"
)

// Release drops from resident memory the data blocks of every table of
// the store that it can tell stays mapped meanwhile, and returns how many
// bytes of mappings it advised (not all of them were resident). The
// store must stay open until it returns, or Stop be called before it
// closes.
//
// A table's index and Bloom filter, at the end of its file, stay: every
// read of a key looks them up in each table that may hold it, where a
// data block is read once and kept decompressed in Badger's block cache.
// The first reads of blocks after a release map them back (minor page
// faults): a 51-row query through an index right after an index build,
// whose releases dropped its blocks, took 3 to 10 ms instead of 2 to 4 on
// a loaded machine.
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
// A table written meanwhile is left for the next call. (Badger v4.9's
// compactions, levelsController.runCompactDef and appendIterators; an
// upgrade of Badger checks that these still hold.)
func (p *TablePages) Release() (advised int64, err error) {
	if p == nil {
		return 0, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
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
	held := map[uint64]int{}
	for id, index := range tableIDs(p.db) {
		if _, ok := before[id]; ok {
			held[id] = index
		}
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	page := uintptr(os.Getpagesize())
	for _, m := range tableMappings(maps, p.dir) {
		index, ok := held[m.id]
		if !ok {
			continue
		}
		// What follows the blocks: the index, its length, the checksum
		// and its length (a few dozen bytes), and the mapping's last
		// page, which the file may not fill.
		tail := uintptr(index) + 2*page
		if m.end-m.start <= tail {
			continue
		}
		end := (m.end - tail) &^ (page - 1)
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, m.start, end-m.start, syscall.MADV_DONTNEED); errno != 0 {
			return advised, errno
		}
		advised += int64(end - m.start)
	}
	return advised, nil
}

// tableIDs returns the IDs of db's tables, each with the size of its
// index.
func tableIDs(db *badger.DB) map[uint64]int {
	ids := map[uint64]int{}
	for _, t := range db.Tables() {
		ids[t.ID] = t.IndexSz
	}
	return ids
}

// mapping is one line of /proc/self/maps that maps a table file.
type mapping struct {
	start, end uintptr
	id         uint64
}

// tableMappings lists the mappings of dir's table files in maps, the
// text of /proc/self/maps.
func tableMappings(maps []byte, dir string) []mapping {
	var out []mapping
	for line := range bytes.Lines(maps) {
		if m, ok := tableMapping(line, dir); ok {
			out = append(out, m)
		}
	}
	return out
}

// tableMapping reads one mapping's line, "start-end perms offset dev
// inode path" (as in /proc/self/maps, and heading each mapping in
// /proc/self/smaps), and reports whether it maps one of dir's tables.
func tableMapping(line []byte, dir string) (mapping, bool) {
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
	// A table is mapped whole, from its start.
	if len(f) < 5 || len(path) == 0 || string(f[2]) != "00000000" || filepath.Dir(string(path)) != dir {
		return mapping{}, false
	}
	id, ok := tableID(filepath.Base(string(path)))
	if !ok {
		return mapping{}, false
	}
	lo, hi, ok := bytes.Cut(f[0], []byte("-"))
	if !ok {
		return mapping{}, false
	}
	start, err1 := strconv.ParseUint(string(lo), 16, 64)
	end, err2 := strconv.ParseUint(string(hi), 16, 64)
	if err1 != nil || err2 != nil || end <= start {
		return mapping{}, false
	}
	return mapping{start: uintptr(start), end: uintptr(end), id: id}, true
}

// ResidentTables sums the resident memory (RSS) of this process's
// mappings of dir's table files, from /proc/self/smaps: what Release
// gives back. Tests and probes use it.
func ResidentTables(dir string) (int64, error) {
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, fmt.Errorf("badgerdir: resident tables: %w", err)
	}
	var sum int64
	in := false
	for line := range bytes.Lines(b) {
		f := bytes.Fields(line)
		switch {
		case len(f) == 0:
		case !bytes.HasSuffix(f[0], []byte(":")): // a mapping's first line
			_, in = tableMapping(line, dir)
		case in && len(f) >= 2 && string(f[0]) == "Rss:":
			kb, _ := strconv.ParseInt(string(f[1]), 10, 64)
			sum += kb << 10
		}
	}
	return sum, nil
}
