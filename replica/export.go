package replica

import "github.com/ferrysync/ferry/crdt"

// Export returns the record's whole document in Automerge's saved form,
// which any Automerge library loads (JavaScript's included), and its
// heads. A deleted record is exported too: its tombstone is a field
// (crdt.TombstoneKey). ErrNotFound if the replica has no such record.
func (c *Collection) Export(id string) (doc []byte, heads crdt.Heads, err error) {
	err = c.read(id, func(d *crdt.Doc, _ meta) error {
		doc, heads = d.Save(), d.Heads()
		return nil
	})
	return doc, heads, err
}
