// Package badgerdir holds what Ferry's two Badger stores (a replica's and
// the relay's) share: preparing the folder (refusing foreign files and
// damaged stores, repairing what a crash during Badger's own open left),
// opening and closing Badger without letting its panics escape, with a clear
// error when another process holds the store, read-only opens, logging
// through slog, value-log garbage collection, fsyncs made when the store
// says (Syncer), the store's size on disk, and the format marker that
// tells each kind of store from any other (Marker).
package badgerdir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrForeign means the folder holds files that are not a Badger store.
var ErrForeign = errors.New("folder holds files that are not a Badger store")

// ErrDamaged means the folder holds a Badger store that cannot be opened as
// it is: a file is missing, cut short or corrupt. Nothing in the folder was
// changed. Errors wrapping it name the folder and what is wrong; the store
// that wraps them says how to recover.
var ErrDamaged = errors.New("store folder is damaged")

// DamagedError is an ErrDamaged. Its text names the folder and the problem,
// not ErrDamaged itself, so a store can wrap it under its own sentinel
// without repeating words; its fields let a message for people leave out
// Badger's own wording of the cause.
type DamagedError struct {
	Dir       string
	Problem   string // what is wrong, in Ferry's words ("table 000003.sst is damaged")
	Err       error  // the cause, if any, in Badger's words
	Untouched bool   // found before anything wrote to the folder
}

func (e *DamagedError) Error() string {
	s := e.Dir + ": " + e.Problem
	if e.Err != nil {
		// Some of Badger's errors are joined with newlines.
		s += ": " + strings.ReplaceAll(e.Err.Error(), "\n", " ")
	}
	if e.Untouched {
		s += "; nothing in the folder was changed"
	}
	return s
}

func (e *DamagedError) Is(target error) bool { return target == ErrDamaged }

func (e *DamagedError) Unwrap() error { return e.Err }

// ForeignError is an ErrForeign: Dir holds File, which Badger did not
// write.
type ForeignError struct {
	Dir, File string
}

func (e *ForeignError) Error() string {
	return fmt.Sprintf("%v: %s holds %q", ErrForeign, e.Dir, e.File)
}

func (e *ForeignError) Is(target error) bool { return target == ErrForeign }

// Prepare makes dir ready for badger.Open and reports whether it already
// holds a store. It creates a missing dir. It refuses (ErrForeign) a folder
// with files Badger would not have written, without touching them.
//
// It refuses (ErrDamaged), without touching anything, a store whose MANIFEST
// is missing or unreadable, or cut short beside a table it no longer lists
// holding newer writes than the listed ones, whose key registry is unreadable, or one of
// whose tables is missing or fails its checksums: Badger would otherwise
// delete every table its MANIFEST does not list, return damaged records as
// empty ones, or panic. Verifying every
// table reads the whole store once per open (see docs/operations.md for
// the cost).
//
// It repairs two states a crash during Badger's open leaves, and nothing
// else:
//   - Badger writes LOCK and MANIFEST-REWRITE, then renames the latter to
//     MANIFEST, before it creates any other file; killed in between, the
//     folder holds those two files only. They hold no data, so they are
//     removed and the store is created anew.
//   - Badger creates memtable (.mem) and value log (.vlog) files before
//     writing their headers; an empty one makes the next open fail
//     (dgraph-io/badger#2207). Empty files hold nothing, so they are removed.
//
// Prepare holds Badger's folder lock (shared) while it looks, so it never
// repairs or judges a store that is open, in this process or another; such
// a folder is an error.
func Prepare(dir string) (exists bool, err error) {
	unlock, err := lockDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, os.MkdirAll(dir, 0o700)
	}
	if err != nil {
		return false, err
	}
	defer unlock()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	hasManifest := false
	for _, e := range entries {
		if !isBadgerFile(e.Name()) {
			return false, &ForeignError{Dir: dir, File: e.Name()}
		}
		hasManifest = hasManifest || e.Name() == "MANIFEST"
	}
	if !hasManifest {
		return false, clearAbortedOpen(dir, entries)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".mem") || strings.HasSuffix(e.Name(), ".vlog") {
			if info, err := e.Info(); err == nil && info.Size() == 0 {
				if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
					return false, fmt.Errorf("removing empty %s: %w", e.Name(), err)
				}
			}
		}
	}
	return true, verifyStore(dir)
}

// clearAbortedOpen empties a folder without a MANIFEST if it holds only
// what Badger writes before its first MANIFEST, and refuses it otherwise:
// any other Badger file means a MANIFEST existed and was lost, and the
// files may hold data.
func clearAbortedOpen(dir string, entries []os.DirEntry) error {
	var data []string
	for _, e := range entries {
		if e.Name() != "LOCK" && e.Name() != "MANIFEST-REWRITE" {
			data = append(data, e.Name())
		}
	}
	if len(data) > 0 {
		if len(data) > 5 {
			data = append(data[:5], fmt.Sprintf("and %d more", len(data)-5))
		}
		return &DamagedError{Dir: dir, Untouched: true, Problem: fmt.Sprintf(
			"its MANIFEST (Badger's list of the store's tables) is missing, and it holds files that may hold data (%s)",
			strings.Join(data, ", "))}
	}
	for _, e := range entries {
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("clearing an aborted first open: %w", err)
		}
	}
	return nil
}

func isBadgerFile(name string) bool {
	switch name {
	case "LOCK", "MANIFEST", "MANIFEST-REWRITE", "KEYREGISTRY", "KEYREGISTRY-REWRITE", "DISCARD":
		return true
	}
	for _, suf := range []string{".sst", ".vlog", ".mem"} {
		if strings.HasSuffix(name, suf) {
			return true
		}
	}
	return false
}
