package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrysync/ferry/relay/badgerstore"
)

// BackupCommand writes a backup of a stopped relay's data folder to a file:
// its store, opened read-only, and its dev app (see backupfile.go). It
// writes nothing into the data folder, and refuses a folder that is not a
// relay's.
type BackupCommand struct {
	Stdout, Stderr io.Writer
}

const backupHelp = `Usage: ferry backup --data FOLDER --out FILE

Writes a backup of a relay's data folder to a new file: the store and the
dev app (dev-app.json). The relay must be stopped. Nothing in the folder is
changed. Apps listed in a configuration file are not in the data folder:
keep that file with the backup.
`

func (c *BackupCommand) Run(ctx context.Context, args []string) error {
	fs := newFlags("backup")
	data := fs.String("data", "ferry-data", "the relay's data `folder` (the one holding store/)")
	out := fs.String("out", "", "backup `file` to write (required; must not exist)")
	if err := parse(fs, args, c.Stdout, backupHelp); err != nil {
		return err
	}
	if *out == "" {
		return usagef(fs, "--out is required")
	}
	if err := checkRelayData(*data); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	m, inc, err := writeBackup(f, *data, time.Now())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(*out))
	}
	if err != nil {
		os.Remove(*out)
		return fmt.Errorf("backup: %w", err)
	}
	fmt.Fprintf(c.Stdout, "backup of %s written to %s\n", *data, *out)
	fmt.Fprintf(c.Stdout, "  included: the relay store (incarnation %s)", inc)
	if m.DevApp != nil {
		fmt.Fprintf(c.Stdout, " and the dev app (%s)", devAppFile)
	}
	fmt.Fprintln(c.Stdout)
	fmt.Fprintln(c.Stdout, "  not included: apps listed in a configuration file; keep that file (it holds their secrets) with the backup")
	return nil
}

// checkRelayData refuses a data folder that does not hold a relay store,
// saying what it found instead.
func checkRelayData(data string) error {
	info, err := os.Stat(data)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s does not exist: pass the relay's data folder (its --data, default ./ferry-data)", data)
	}
	if err != nil {
		return err
	}
	if !info.IsDir() {
		return fmt.Errorf("%s is not a folder: pass the relay's data folder", data)
	}
	if _, err := os.Stat(storeDir(data)); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if _, err := os.Stat(filepath.Join(data, "MANIFEST")); err == nil {
		return fmt.Errorf("%s is a store itself (a device's?), not a relay's data folder, which holds a store/ folder", data)
	}
	return fmt.Errorf("%s holds no relay store (no %s): pass the relay's data folder", data, storeDir(data))
}

// RestoreCommand loads a backup into a data folder that has no store. It
// checks the whole backup before writing anything, and restores into a
// temporary folder it renames into place at the end, so a failure leaves
// the data folder as it was. The restored relay gets a new incarnation ID,
// so devices notice and re-sync slowly rather than trust cursors that may
// point past the restored log.
type RestoreCommand struct {
	Stdout, Stderr io.Writer
}

const restoreHelp = `Usage: ferry restore --data FOLDER --in FILE

Loads a backup written by "ferry backup" into a relay data folder that is
missing or has no store: the store, and the dev app if the backup has one.
The backup is checked whole before anything is written; if the restore
fails, the folder is left as it was. A restore never merges into existing
data.
`

func (c *RestoreCommand) Run(ctx context.Context, args []string) error {
	fs := newFlags("restore")
	data := fs.String("data", "", "the data `folder` to restore into: missing, or without a store (required)")
	in := fs.String("in", "", "the backup `file` (required)")
	if err := parse(fs, args, c.Stdout, restoreHelp); err != nil {
		return err
	}
	if *data == "" || *in == "" {
		return usagef(fs, "--data and --in are required")
	}
	b, err := openBackup(*in)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer b.Close()
	if err := restoreInto(*data, b); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	fmt.Fprintf(c.Stdout, "restored %s into %s: the relay store (%d entries, with a new incarnation)", *in, *data, b.entries)
	switch {
	case b.manifest.DevApp != nil:
		fmt.Fprintf(c.Stdout, " and the dev app\n")
	case b.legacy:
		fmt.Fprintf(c.Stdout, "\n  this backup, from an earlier version, holds the store only: a --dev relay will make a new dev app, whose API key its devices will need\n")
	default:
		fmt.Fprintln(c.Stdout)
	}
	if b.unchecked {
		fmt.Fprintln(c.Stdout, "  this backup, from an earlier version, has no checksum: bytes changed in it since it was written could not be found")
	}
	return nil
}

// restoreInto restores b into the data folder data, leaving data as it was
// if anything fails.
func restoreInto(data string, b *backupFile) (err error) {
	store, devPath := storeDir(data), filepath.Join(data, devAppFile)
	if entries, err := os.ReadDir(store); err == nil && len(entries) > 0 {
		return fmt.Errorf("%s already holds a store: restore into a new folder", data)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if b.manifest.DevApp != nil {
		if _, err := os.Stat(devPath); err == nil {
			return fmt.Errorf("%s already holds a dev app (%s): restore into a new folder", data, devAppFile)
		}
	}

	// Undo, on failure, what this restore made.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if _, err := os.Stat(data); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(data, 0o700); err != nil {
			return err
		}
		undo = append(undo, func() { os.RemoveAll(data) })
	}
	tmp, err := os.MkdirTemp(data, ".store-restoring-")
	if err != nil {
		return err
	}
	undo = append(undo, func() { os.RemoveAll(tmp) })
	if err := badgerstore.Restore(tmp, b.storeReader()); err != nil {
		return err
	}
	if app := b.manifest.DevApp; app != nil {
		js, _ := json.MarshalIndent(app, "", "  ")
		if err := writeFileAtomic(devPath, js, 0o600); err != nil {
			return err
		}
		undo = append(undo, func() { os.Remove(devPath) })
	}
	// An empty store folder is replaced by the rename.
	if err := os.Rename(tmp, store); err != nil {
		return err
	}
	return syncDir(data)
}
