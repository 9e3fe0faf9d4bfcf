package replica_test

import (
	"iter"

	"github.com/ferrysync/ferry/replica"
)

// collect gathers a scan's records.
func collect(seq iter.Seq2[replica.Record, error]) ([]replica.Record, error) {
	var out []replica.Record
	for r, err := range seq {
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}
