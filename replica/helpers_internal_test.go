package replica

import (
	"iter"

	"github.com/ferrysync/ferry/crdt"
)

// pendingChanges returns what a push of the record would send: its changes
// since the heads the relay acknowledged, the heads they lead to, and the
// acknowledged heads (the sync engine's outgoing, for tests).
func (c *Collection) pendingChanges(id string) (changes []byte, heads, acked crdt.Heads, err error) {
	o, err := c.r.outgoing(c.name, id)
	return o.changes, o.heads, o.base, err
}

// acknowledge records that the relay holds the record up to heads, as an
// acknowledged push does.
func (c *Collection) acknowledge(id string, heads crdt.Heads) error {
	return c.r.acknowledge(c.name, []outgoing{{id: id, heads: heads}}, false)
}

// collect gathers a scan's records.
func collect(seq iter.Seq2[Record, error]) ([]Record, error) {
	var out []Record
	for r, err := range seq {
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}
