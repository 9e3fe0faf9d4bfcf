package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/ferrysync/ferry/replica"
)

// InspectCommand summarizes a replica's store: its ID, collections, record
// and pending counts; with --collection, its records; with --id, one record.
// The app using the store must be stopped (Badger holds its folder's lock).
type InspectCommand struct {
	Stdout, Stderr io.Writer
}

func (c *InspectCommand) Run(ctx context.Context, args []string) error {
	fs := newFlags("inspect", c.Stderr)
	data := fs.String("data", "", "the replica's data folder (required)")
	coll := fs.String("collection", "", "list this collection's records")
	id := fs.String("id", "", "show this record (with --collection)")
	limit := fs.Int("limit", 50, "records to list")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *data == "" {
		return errors.New("inspect: --data is required")
	}
	// Local-only: looking must not start the store's periodic or live
	// syncs.
	r, err := replica.Open(*data, &replica.Options{LocalOnly: true})
	if err != nil {
		return fmt.Errorf("inspect: %w", err)
	}
	defer r.Close()
	if *coll == "" {
		names, err := r.Collections()
		if err != nil {
			return err
		}
		fmt.Fprintf(c.Stdout, "replica %s\n", r.ID())
		tw := tabwriter.NewWriter(c.Stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "COLLECTION\tRECORDS\tPENDING")
		for _, n := range names {
			col, _ := r.Collection(n)
			recs, err := col.Scan(replica.ScanOptions{})
			if err != nil {
				return err
			}
			p, err := col.PendingCount()
			if err != nil {
				return err
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\n", n, len(recs), p)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		return printProfiles(c.Stdout, r)
	}
	col, err := r.Collection(*coll)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(c.Stdout)
	enc.SetIndent("", "  ")
	if *id != "" {
		var m map[string]any
		if err := col.Get(*id, &m); err != nil {
			return err
		}
		return enc.Encode(m)
	}
	recs, err := col.Scan(replica.ScanOptions{Limit: *limit, Deleted: true})
	if err != nil {
		return err
	}
	for _, rec := range recs {
		if err := enc.Encode(map[string]any{"id": rec.ID, "deleted": rec.Deleted, "fields": rec.Fields}); err != nil {
			return err
		}
	}
	return nil
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
