package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/ferrysync/ferry/relay"
)

// BackupCommand writes a full backup of a relay's data folder to a file.
// The relay must be stopped (Badger holds its folder's lock).
type BackupCommand struct {
	Stdout, Stderr io.Writer
}

func (c *BackupCommand) Run(ctx context.Context, args []string) error {
	fs := newFlags("backup", c.Stderr)
	data := fs.String("data", "ferry-data", "the relay's data folder")
	out := fs.String("out", "", "backup file to write (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("backup: --out is required")
	}
	store, err := relay.OpenBadgerStore(storeDir(*data), nil)
	if err != nil {
		return fmt.Errorf("backup: %w (is the relay still running?)", err)
	}
	defer store.Close()
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if err := store.Backup(f); err != nil {
		f.Close()
		os.Remove(*out)
		return fmt.Errorf("backup: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("backup: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	fmt.Fprintf(c.Stdout, "backup of %s written to %s\n", *data, *out)
	return nil
}

// RestoreCommand loads a backup into an empty data folder. The restored
// relay gets a new incarnation ID, so devices notice and re-sync slowly
// rather than trust cursors that may point past the restored log.
type RestoreCommand struct {
	Stdout, Stderr io.Writer
}

func (c *RestoreCommand) Run(ctx context.Context, args []string) error {
	fs := newFlags("restore", c.Stderr)
	data := fs.String("data", "", "empty data folder to restore into (required)")
	in := fs.String("in", "", "backup file (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *data == "" || *in == "" {
		return errors.New("restore: --data and --in are required")
	}
	f, err := os.Open(*in)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	if err := relay.RestoreBadgerStore(storeDir(*data), f); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	fmt.Fprintf(c.Stdout, "restored %s into %s\n", *in, *data)
	return nil
}
