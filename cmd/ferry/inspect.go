package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/internal/badgerdir"
	"github.com/ferrysync/ferry/relay"
	"github.com/ferrysync/ferry/relay/badgerstore"
	"github.com/ferrysync/ferry/replica"
)

// InspectCommand summarizes a device's store: its ID, collections, record
// and pending counts, and sync profiles; with --collection, its records;
// with --id, one record. It never writes to the store and never creates
// anything where it looks (see openSnapshot).
type InspectCommand struct {
	Stdout, Stderr io.Writer
}

const inspectHelp = `Usage: ferry inspect --data FOLDER [--collection NAME [--id ID]]
       ferry inspect --relay --data FOLDER

Summarizes a device's store (the folder an app gives replica.Open): its
replica ID, collections with their record and pending counts, and sync
profiles. With --collection it lists that collection's records as JSON
lines; with --id, one record.

The store is opened read-only and copied to a temporary folder, which is
inspected and removed: nothing in FOLDER changes. The app must be stopped.

With --relay, FOLDER is a relay's data folder (its --data): inspect lists
the records whose stored bytes do not load, which the relay cannot compact
and leaves out of fresh devices' first pulls. It opens the store read-only;
the relay must be stopped.
`

func (c *InspectCommand) Run(ctx context.Context, args []string) error {
	fs := newFlags("inspect")
	data := fs.String("data", "", "the device's data `folder` (required)")
	coll := fs.String("collection", "", "list this collection's records")
	id := fs.String("id", "", "show this record (with --collection)")
	limit := fs.Int("limit", 50, "records to list")
	relayStore := fs.Bool("relay", false, "FOLDER is a relay's data folder: list its records that cannot be compacted")
	if err := parse(fs, args, c.Stdout, inspectHelp); err != nil {
		return err
	}
	switch {
	case *data == "":
		return usagef(fs, "--data is required")
	case *relayStore && *coll != "":
		return usagef(fs, "--relay takes no --collection")
	case *relayStore:
		return c.inspectRelay(ctx, *data)
	case *id != "" && *coll == "":
		return usagef(fs, "--id needs --collection")
	case *limit <= 0:
		return usagef(fs, "--limit %d is not positive", *limit)
	}
	r, done, err := openSnapshot(*data)
	if err != nil {
		return fmt.Errorf("inspect: %w", err)
	}
	defer done()
	if *coll == "" {
		names, err := r.Collections()
		if err != nil {
			return err
		}
		fmt.Fprintf(c.Stdout, "replica %s\n", r.ID())
		tw := tabwriter.NewWriter(c.Stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "COLLECTION\tRECORDS\tPENDING")
		for _, n := range names {
			col := r.Collection(n)
			records := 0
			for _, err := range col.Scan(replica.ScanOptions{}) {
				if err != nil {
					return err
				}
				records++
			}
			p, err := col.PendingCount()
			if err != nil {
				return err
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\n", n, records, p)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		return printProfiles(c.Stdout, r)
	}
	if err := hasCollection(r, *coll); err != nil {
		return fmt.Errorf("inspect: %w", err)
	}
	col := r.Collection(*coll)
	enc := json.NewEncoder(c.Stdout)
	enc.SetIndent("", "  ")
	if *id != "" {
		var m map[string]any
		if err := col.Get(*id, &m); err != nil {
			return fmt.Errorf("inspect: %w", err)
		}
		return enc.Encode(m)
	}
	for rec, err := range col.Scan(replica.ScanOptions{Limit: *limit, Deleted: true}) {
		if err != nil {
			return err
		}
		if err := enc.Encode(map[string]any{"id": rec.ID, "deleted": rec.Deleted, "fields": rec.Fields}); err != nil {
			return err
		}
	}
	return nil
}

// inspectRelay lists the records of the relay store in data that cannot be
// compacted (relay.CheckCompaction).
func (c *InspectCommand) inspectRelay(ctx context.Context, data string) error {
	st, err := badgerstore.OpenReadOnly(storeDir(data))
	if err != nil {
		return fmt.Errorf("inspect: %w", err)
	}
	defer st.Close()
	fails, err := relay.CheckCompaction(ctx, st)
	if err != nil {
		return fmt.Errorf("inspect: %w", err)
	}
	fmt.Fprintf(c.Stdout, "relay store %s\n", st.Incarnation())
	if len(fails) == 0 {
		fmt.Fprintln(c.Stdout, "every record that needs compacting loads")
		return nil
	}
	fmt.Fprintf(c.Stdout, "%d records cannot be compacted (their stored bytes do not load):\n", len(fails))
	tw := tabwriter.NewWriter(c.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tCOLLECTION\tRECORD\tERROR")
	for _, f := range fails {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\n", f.Coll.Tenant, f.Coll.Collection, f.Record, f.Err)
	}
	return tw.Flush()
}

// hasCollection says, as an error, that the store has no collection
// name: listing it would print nothing, which reads as an empty one.
func hasCollection(r *replica.Replica, name string) error {
	if err := replica.ValidateCollection(name); err != nil {
		return err
	}
	names, err := r.Collections()
	if err != nil {
		return err
	}
	if slices.Contains(names, name) {
		return nil
	}
	if len(names) == 0 {
		return fmt.Errorf("the store has no collection %q (it has none)", name)
	}
	return fmt.Errorf("the store has no collection %q (it has %s)", name, strings.Join(names, ", "))
}

// openSnapshot opens a copy of the device store in dir, local-only. The
// store is opened read-only and streamed (in Badger's backup format) into
// a temporary folder, where the replica is opened: replica.Open writes
// (it repairs what a crash left and records its format), and must not
// write to what is being inspected. done closes the copy and removes it.
func openSnapshot(dir string) (r *replica.Replica, done func(), err error) {
	info, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("%s does not exist", dir)
	}
	if err != nil {
		return nil, nil, err
	}
	if !info.IsDir() {
		return nil, nil, fmt.Errorf("%s is not a folder", dir)
	}
	for _, relayFile := range []string{"store/", devAppFile} {
		if _, err := os.Stat(filepath.Join(dir, relayFile)); err == nil {
			return nil, nil, fmt.Errorf("%s is a relay's data folder (it holds %s): inspect reads a device's store, or with --relay a relay's", dir, relayFile)
		}
	}
	src, err := badgerdir.OpenReadOnly(dir, badger.DefaultOptions(dir).WithLogger(nil).WithBlockCacheSize(8<<20))
	if errors.Is(err, badgerdir.ErrNoStore) {
		return nil, nil, fmt.Errorf("%s holds no store", dir)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", dir, err)
	}
	defer src.Close()

	tmp, err := os.MkdirTemp("", "ferry-inspect-")
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := copyStore(src, tmp); err != nil {
		return nil, nil, fmt.Errorf("copying %s: %w", dir, err)
	}
	r, err = replica.Open(tmp, &replica.Options{LocalOnly: true, Relaxed: true, GCInterval: -1})
	if errors.Is(err, replica.ErrNotStore) {
		return nil, nil, fmt.Errorf("%s is not a device's store (a relay's store?): %w", dir, err)
	}
	if err != nil {
		return nil, nil, err
	}
	return r, func() { r.Close(); os.RemoveAll(tmp) }, nil
}

// copyStore streams src into a new Badger database in dir.
func copyStore(src *badger.DB, dir string) error {
	dst, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithSyncWrites(false).
		WithMemTableSize(16 << 20).WithBlockCacheSize(8 << 20))
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	backed := make(chan error, 1)
	go func() {
		_, err := src.Backup(pw, 0)
		pw.CloseWithError(err)
		backed <- err
	}()
	err = dst.Load(pr, 256)
	pr.CloseWithError(errors.New("load ended")) // unblocks the backup if Load failed first
	if berr := <-backed; err == nil {
		err = berr
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}

// printProfiles lists the sync profiles with their last sync.
func printProfiles(w io.Writer, r *replica.Replica) error {
	ps, err := r.Profiles()
	if err != nil || len(ps) == 0 {
		return err
	}
	fmt.Fprintf(w, "\nprofiles (%d of at most %d)\n", len(ps), r.MaxProfiles())
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROFILE\tMODE\tTYPE\tLAST SYNC\tSTATUS\tIN +/~/-\tOUT +/~/-")
	for _, p := range ps {
		st, err := r.LastSync(p.Name)
		if err != nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\tnever\t\t\t\n", p.Name, p.Mode, p.Type)
			continue
		}
		var in, out replica.Counts
		for _, cs := range st.Collections {
			in.Added, in.Updated, in.Removed = in.Added+cs.FromRelay.Added, in.Updated+cs.FromRelay.Updated, in.Removed+cs.FromRelay.Removed
			out.Added, out.Updated, out.Removed = out.Added+cs.ToRelay.Added, out.Updated+cs.ToRelay.Updated, out.Removed+cs.ToRelay.Removed
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d/%d\t%d/%d/%d\n", p.Name, p.Mode, p.Type,
			st.End.Format("2006-01-02 15:04:05"), st.Status, in.Added, in.Updated, in.Removed, out.Added, out.Updated, out.Removed)
	}
	return tw.Flush()
}
