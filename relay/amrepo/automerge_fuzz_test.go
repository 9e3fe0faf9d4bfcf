package amrepo

import (
	"testing"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// FuzzAutomergeDecode feeds arbitrary bytes to the automerge-repo message
// decoder and the sync message parser: neither may panic, and whatever the
// parser accepts re-encodes to a message that automerge takes in without
// crashing (the relay hands automerge nothing else).
func FuzzAutomergeDecode(f *testing.F) {
	join, _ := encodeAMMessage(&amMessage{Type: amJoin, SenderID: "p", PeerMetadata: &amPeerMetadata{}, SupportedProtocolVersions: []string{"1"}})
	f.Add(join)
	sync, _ := encodeAMMessage(&amMessage{Type: amSync, SenderID: "p", DocumentID: "1Bhh3pU9gLXZiNDL6PEa1Gs9fh", Data: []byte{0x42, 0, 0, 0, 0}})
	f.Add(sync)
	f.Add([]byte{0x42, 1, 0xaa, 0, 1, 0, 4, 1, 10, 7, 0, 0, 0})
	f.Add([]byte{0x43, 0, 0, 1, 0, 0, 1, 3, 1, 2, 3, 2, 2, 0x82})
	d, _ := crdt.New("aa")
	d.Set(crdt.Path{"x"}, 1)
	d.Commit("", time.Time{})
	s := crdt.NewSyncState()
	if m, ok, _ := s.Generate(d); ok {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := decodeAMMessage(b); err == nil {
			if _, err := encodeAMMessage(m); err != nil {
				t.Fatalf("decoded message does not re-encode: %v", err)
			}
		}
		sm, err := parseSyncMessage(b)
		if err != nil {
			return
		}
		v1 := sm.encodeV1()
		again, err := parseSyncMessage(v1)
		if err != nil || len(again.changes) != 0 || len(again.heads) != len(sm.heads) {
			t.Fatalf("re-encoded message: %v", err)
		}
		doc, _ := crdt.New("")
		st := crdt.NewSyncState()
		st.Receive(doc, v1) // errors are fine; crashes are not
		st.Generate(doc)
	})
}
