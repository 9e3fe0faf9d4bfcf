// Package badgerdir holds what Ferry's two Badger stores (a replica's and
// the relay's) share: preparing the folder (refusing foreign files,
// repairing what a crash during Badger's own open left), opening with a
// clear error when another process holds the store, read-only opens,
// logging through slog, value-log garbage collection, and the store's size
// on disk.
package badgerdir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrForeign means the folder holds files that are not Badger's.
var ErrForeign = errors.New("folder holds files that are not a Badger store")

// Prepare makes dir ready for badger.Open and reports whether it already
// holds a store. It creates a missing dir. It refuses (ErrForeign) a folder
// with files Badger would not have written, without touching them.
//
// It repairs two states a crash during Badger's open leaves:
//   - Badger writes LOCK and MANIFEST-REWRITE, then renames the latter to
//     MANIFEST; killed in between, the folder has Badger's files but no
//     MANIFEST. No write can have been acknowledged without a MANIFEST, so
//     those files are removed and the store is created anew.
//   - Badger creates memtable (.mem) and value log (.vlog) files before
//     writing their headers; an empty one makes the next open fail
//     (dgraph-io/badger#2207). Empty files hold nothing, so they are removed.
func Prepare(dir string) (exists bool, err error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, os.MkdirAll(dir, 0o700)
	}
	if err != nil {
		return false, err
	}
	hasManifest := false
	for _, e := range entries {
		if !isBadgerFile(e.Name()) {
			return false, fmt.Errorf("%w: %s holds %q", ErrForeign, dir, e.Name())
		}
		hasManifest = hasManifest || e.Name() == "MANIFEST"
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		switch {
		case !hasManifest:
			if err := os.Remove(path); err != nil {
				return false, fmt.Errorf("clearing an aborted first open: %w", err)
			}
		case strings.HasSuffix(e.Name(), ".mem") || strings.HasSuffix(e.Name(), ".vlog"):
			if info, err := e.Info(); err == nil && info.Size() == 0 {
				if err := os.Remove(path); err != nil {
					return false, fmt.Errorf("removing empty %s: %w", e.Name(), err)
				}
			}
		}
	}
	return hasManifest, nil
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
