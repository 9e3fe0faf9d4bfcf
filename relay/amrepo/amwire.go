package amrepo

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"reflect"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/uuid"
)

// automerge-repo's WebSocket protocol (@automerge/automerge-repo-network-
// websocket 2.x): each WebSocket binary message is one CBOR map with a
// "type". The client opens with join; the server answers peer (or error,
// then closes). After that both sides send repo messages, each naming its
// sender and target peer: request and sync carry an Automerge sync message
// for one document, doc-unavailable says a peer has no such document,
// ephemeral carries application data for a document's other peers.

// amMessage is every message type's fields; absent ones are zero.
type amMessage struct {
	Type     string `cbor:"type"`
	SenderID string `cbor:"senderId,omitempty"`
	TargetID string `cbor:"targetId,omitempty"`

	// join and peer
	PeerMetadata              *amPeerMetadata `cbor:"peerMetadata,omitempty"`
	SupportedProtocolVersions []string        `cbor:"supportedProtocolVersions,omitempty"`
	SelectedProtocolVersion   string          `cbor:"selectedProtocolVersion,omitempty"`

	// request, sync, doc-unavailable, ephemeral, remote-heads-changed
	DocumentID string `cbor:"documentId,omitempty"`
	Data       []byte `cbor:"data,omitempty"`

	// ephemeral: the original sender's session and sequence number, which
	// receivers use to drop duplicates; passed on unchanged.
	Count     uint64 `cbor:"count,omitempty"`
	SessionID string `cbor:"sessionId,omitempty"`

	// error
	Message string `cbor:"message,omitempty"`
}

type amPeerMetadata struct {
	StorageID   string `cbor:"storageId,omitempty"`
	IsEphemeral bool   `cbor:"isEphemeral"`
}

const (
	amJoin          = "join"
	amPeer          = "peer"
	amError         = "error"
	amRequest       = "request"
	amSync          = "sync"
	amUnavailable   = "doc-unavailable"
	amEphemeral     = "ephemeral"
	amSubscription  = "remote-subscription-change"
	amHeadsChanged  = "remote-heads-changed"
	amProtocolV1    = "1"
	amMaxPeerIDSize = 256
)

// amDecMode decodes what clients send, with limits that make hostile CBOR
// cheap to refuse: shallow nesting (the protocol needs 3 levels), few
// elements, no duplicate keys, no indefinite lengths (automerge-repo's
// encoder writes none), and no tags.
var amDecMode = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:   8,
		MaxArrayElements:  1024,
		MaxMapPairs:       64,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		DefaultMapType:    reflect.TypeOf(map[string]any(nil)),
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField & 0, // unknown fields are ignored
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return dm
}()

var amEncMode = func() cbor.EncMode {
	em, err := cbor.EncOptions{Sort: cbor.SortNone}.EncMode()
	if err != nil {
		panic(err)
	}
	return em
}()

var errAMMessage = errors.New("malformed automerge-repo message")

// decodeAMMessage decodes one WebSocket message. Any CBOR that is not a
// single map of the fields above, with the right types, is an error.
func decodeAMMessage(b []byte) (*amMessage, error) {
	var m amMessage
	if err := amDecMode.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", errAMMessage, err)
	}
	if m.Type == "" {
		return nil, fmt.Errorf("%w: no type", errAMMessage)
	}
	if len(m.SenderID) > amMaxPeerIDSize || len(m.TargetID) > amMaxPeerIDSize || len(m.SessionID) > amMaxPeerIDSize {
		return nil, fmt.Errorf("%w: peer or session ID over %d bytes", errAMMessage, amMaxPeerIDSize)
	}
	return &m, nil
}

func encodeAMMessage(m *amMessage) ([]byte, error) {
	return amEncMode.Marshal(m)
}

// Document IDs are bs58check (Bitcoin's base58 alphabet, with a 4-byte
// double-SHA-256 checksum) of 16 bytes. The 16 bytes of a record are its
// UUID's: a record whose ID is a UUID in canonical form is reachable, any
// other is not.

const b58Alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

var b58Index = func() [256]int8 {
	var t [256]int8
	for i := range t {
		t[i] = -1
	}
	for i, c := range b58Alphabet {
		t[c] = int8(i)
	}
	return t
}()

var errDocumentID = errors.New("not a document ID")

// recordForDocumentID returns the record ID (a canonical UUID) that a
// documentId names.
func recordForDocumentID(id string) (string, error) {
	// 16 bytes and a 4-byte checksum take at most 28 base58 digits.
	if id == "" || len(id) > 28 {
		return "", fmt.Errorf("%w: %q", errDocumentID, id)
	}
	n := new(big.Int)
	zeros := 0
	for i := 0; i < len(id); i++ {
		d := b58Index[id[i]]
		if d < 0 {
			return "", fmt.Errorf("%w: %q has a character outside base58", errDocumentID, id)
		}
		if d == 0 && i == zeros {
			zeros++
		}
		n.Mul(n, big.NewInt(58))
		n.Add(n, big.NewInt(int64(d)))
	}
	raw := append(make([]byte, zeros), n.Bytes()...)
	if n.Sign() == 0 {
		raw = make([]byte, zeros)
	}
	if len(raw) != 20 {
		return "", fmt.Errorf("%w: %q holds %d bytes, want 16 and a checksum", errDocumentID, id, len(raw)-4)
	}
	payload, sum := raw[:16], raw[16:]
	if !bytes.Equal(b58Checksum(payload), sum) {
		return "", fmt.Errorf("%w: %q fails its checksum", errDocumentID, id)
	}
	return uuid.UUID(payload).String(), nil
}

// documentIDForRecord returns a record's documentId, or "" if the record's
// ID is not a canonical UUID.
func documentIDForRecord(record string) string {
	u, err := uuid.Parse(record)
	if err != nil || u.String() != record {
		return ""
	}
	raw := append(u[:], b58Checksum(u[:])...)
	n := new(big.Int).SetBytes(raw)
	var out []byte
	mod, base := new(big.Int), big.NewInt(58)
	for n.Sign() > 0 {
		n.DivMod(n, base, mod)
		out = append(out, b58Alphabet[mod.Int64()])
	}
	for _, c := range raw {
		if c != 0 {
			break
		}
		out = append(out, b58Alphabet[0])
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return string(out)
}

func b58Checksum(payload []byte) []byte {
	a := sha256.Sum256(payload)
	b := sha256.Sum256(a[:])
	return b[:4]
}
