package crdt

import (
	"fmt"

	"github.com/automerge/automerge-go"
)

// SyncState is what one side of Automerge's sync protocol knows of one
// peer's copy of one document: the heads they share, what the peer has
// and needs, and what was sent and not yet acknowledged. It answers the
// peer with messages that carry the changes the peer lacks.
//
// It speaks sync messages of version 1 and never applies changes: the
// messages given to [SyncState.Receive] must carry none, and the document
// must already hold everything the peer's message brought, so whatever
// imported the changes (with [Doc.Import]'s checks) stays the only way in.
//
// The document is passed to each call rather than held, so one SyncState
// follows a record whose document is reloaded as it changes. A SyncState
// is not safe for concurrent use; the documents passed to it are only
// read.
type SyncState struct {
	ss *automerge.SyncState
}

// NewSyncState returns the state of a peer nothing is known of yet.
func NewSyncState() *SyncState {
	return &SyncState{ss: automerge.NewSyncState(nil)}
}

// Receive takes in a sync message from the peer, which must carry no
// changes (see [SyncState]). d is the document as it is now.
func (s *SyncState) Receive(d *Doc, msg []byte) (err error) {
	defer recoverCorrupt(&err)
	s.ss.Doc = d.live()
	defer func() { s.ss.Doc = nil }()
	m, err := s.ss.ReceiveMessage(msg)
	if err != nil {
		return fmt.Errorf("%w: sync message: %v", ErrCorrupt, err)
	}
	if len(m.Changes()) > 0 {
		// Too late to refuse them: say so loudly, it is a caller's bug.
		// The journal did not see them come in.
		d.jn.forget()
		return fmt.Errorf("crdt: SyncState.Receive was given a message with changes")
	}
	return nil
}

// Generate returns the next message for the peer, given the document as it
// is now, or ok=false when there is nothing to send (the peer is up to
// date, or an earlier message is still unanswered).
func (s *SyncState) Generate(d *Doc) (msg []byte, ok bool, err error) {
	defer recoverCorrupt(&err)
	s.ss.Doc = d.live()
	defer func() { s.ss.Doc = nil }()
	m, ok := s.ss.GenerateMessage()
	if !ok {
		return nil, false, nil
	}
	return m.Bytes(), true, nil
}
