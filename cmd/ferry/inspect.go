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
	r, err := replica.Open(*data, nil)
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
		return tw.Flush()
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
