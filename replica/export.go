package replica

import (
	"fmt"

	"github.com/ferrysync/ferry/crdt"
)

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

// ImportDocument merges a whole saved document (from Export, or any
// Automerge library's save) into the record, creating it if needed, and
// returns the record's heads after. The document's changes are taken as
// they are, so a record new to the replica gets exactly the sender's
// heads. Like Import, what arrives is not pending, and bytes that are not
// a valid document give an error wrapping crdt.ErrCorrupt with nothing
// written.
func (c *Collection) ImportDocument(id string, doc []byte) (crdt.Heads, error) {
	// Load first: Import also takes bare changes, which are not a
	// document, and its errors name the first bad chunk only.
	if _, err := crdt.Load(doc, ""); err != nil {
		return nil, fmt.Errorf("ferry: %s/%s: %w", c.name, id, err)
	}
	tx := &Tx{r: c.r}
	if err := tx.queue(op{kind: opImport, coll: c.name, id: id, data: doc}); err != nil {
		return nil, err
	}
	if _, err := c.r.commit(tx.ops, false); err != nil {
		return nil, err
	}
	return c.Heads(id)
}
