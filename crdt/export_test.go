package crdt

import (
	"fmt"

	"github.com/automerge/automerge-go"
)

// CheckEncoding checks that every change chunk in data is in Automerge's
// canonical encoding (the document-independent half of Import's checks).
func CheckEncoding(data []byte) error {
	ci, err := frame(data)
	if err != nil {
		return err
	}
	for i, p := range ci.payloads {
		if _, err := checkCanonical(p); err != nil {
			return fmt.Errorf("change %s: %w", ci.changes[i].Hash, err)
		}
	}
	return nil
}

// LastChange returns the bytes of the change a Commit just made, without
// ChangesSince's walk of the history (benchmarks make thousands).
func LastChange(d *Doc) []byte {
	h := d.am.Heads()
	c, err := d.am.Change(automerge.ChangeHash(h[0]))
	if err != nil {
		panic(err)
	}
	return c.Save()
}

// ChunkPayload returns a change chunk's payload.
var ChunkPayload = chunkPayload
