package transport

// Presence bounds. Presence is small, frequent and never stored: a
// cursor, a selection, a name and a colour.
const (
	// MaxPresenceData bounds one presence message's data.
	MaxPresenceData = 4 << 10
	// MaxPeerID bounds a peer's ID (a replica ID, or an automerge-repo
	// peer ID).
	MaxPeerID = 256
)

// Presence is who is looking at a record, or at a collection, and where:
// ephemeral state that is never stored. A device sends its own (Peer
// empty; the relay answers ok, or an error such as rate_limited); the
// relay passes it, with Peer set to the sender, to the other sessions
// subscribed to the collection (id 0), and to the automerge-repo clients
// syncing the record.
//
// Data is one presence message in automerge-repo's encoding (CBOR, as its
// Presence class sends in ephemeral messages): a map whose "__presence"
// key holds {"type": "snapshot", "state": {...}}, {"type": "update",
// "channel": c, "value": v}, {"type": "heartbeat"} or {"type":
// "goodbye"}. The relay checks only that it is well-formed CBOR within
// MaxPresenceData; package replica encodes and decodes it.
type Presence struct {
	Collection string `msgpack:"collection"`
	Record     string `msgpack:"record,omitempty"` // empty: the whole collection
	Peer       string `msgpack:"peer,omitempty"`   // set by the relay
	Data       []byte `msgpack:"data"`
}

func (p *Presence) validate(*Limits) error {
	if err := checkCollection(p.Collection); err != nil {
		return err
	}
	if p.Record != "" {
		if err := ValidateRecordID(p.Record); err != nil {
			return errorf(CodeBadFrame, "presence: %v", err)
		}
	}
	if len(p.Peer) > MaxPeerID {
		return errorf(CodeBadFrame, "presence: peer ID over %d bytes", MaxPeerID)
	}
	if len(p.Data) == 0 {
		return errorf(CodeBadFrame, "presence without data")
	}
	if len(p.Data) > MaxPresenceData {
		return errorf(CodeTooLarge, "presence data of %d bytes exceeds %d", len(p.Data), MaxPresenceData)
	}
	return nil
}
