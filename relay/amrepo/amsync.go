package amrepo

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/ferrysync/ferry/crdt"
)

// Automerge sync messages, as automerge's sync.rs encodes them:
//
//	type(1: 0x42 v1, 0x43 v2) heads need have changes [flags]
//	heads, need: uLEB128 count, then 32-byte hashes
//	have:        uLEB128 count, then per have: hashes (last sync) and a
//	             uLEB128-length-prefixed bloom filter
//	changes:     uLEB128 count, then uLEB128-length-prefixed chunks (v1:
//	             change chunks; v2: possibly one whole saved document)
//	flags:       optional uLEB128-length-prefixed bytes
//
// The relay parses every message in Go, takes the changes out and stores
// them through the push path, and hands automerge only a v1 message
// without changes, flags or anything it did not check: the bloom filters
// are checked here because automerge's Rust code divides by their size.

var errSyncMsg = errors.New("malformed sync message")

const (
	syncMsgV1 = 0x42
	syncMsgV2 = 0x43
)

// syncMessage is a parsed sync message.
type syncMessage struct {
	heads   []crdt.Hash
	need    []crdt.Hash
	have    []syncHave
	changes [][]byte // chunks, in order
}

type syncHave struct {
	lastSync []crdt.Hash
	bloom    []byte // checked, as sent
}

// Bounds on what a bloom filter may declare. Automerge uses 10 bits per
// entry and 7 probes.
const (
	maxBloomBitsPerEntry = 64
	maxBloomProbes       = 64
)

func parseSyncMessage(b []byte) (*syncMessage, error) {
	r := syncReader{b: b}
	v := r.byte()
	if r.err == nil && v != syncMsgV1 && v != syncMsgV2 {
		return nil, fmt.Errorf("%w: type byte 0x%02x", errSyncMsg, v)
	}
	m := &syncMessage{}
	m.heads = r.hashes("heads")
	m.need = r.hashes("need")
	nh := r.count("have", 2)
	for i := uint64(0); i < nh && r.err == nil; i++ {
		h := syncHave{lastSync: r.hashes("last sync")}
		h.bloom = r.bytes("bloom")
		if r.err == nil {
			if err := checkBloom(h.bloom); err != nil {
				return nil, err
			}
		}
		m.have = append(m.have, h)
	}
	nc := r.count("changes", 2)
	for i := uint64(0); i < nc && r.err == nil; i++ {
		c := r.bytes("change")
		if r.err == nil && len(c) == 0 {
			r.err = fmt.Errorf("%w: empty change", errSyncMsg)
		}
		m.changes = append(m.changes, c)
	}
	if r.err == nil && len(r.b) > 0 {
		// Flags: read and dropped (capabilities and per-message signals
		// that the relay does not act on). Anything after them is ignored,
		// as automerge ignores it.
		r.bytes("flags")
	}
	if r.err != nil {
		return nil, r.err
	}
	return m, nil
}

// checkBloom checks a bloom filter the way automerge parses it, and that
// it declares sizes automerge can use without dividing by zero or
// allocating without bound.
func checkBloom(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	r := syncReader{b: b}
	entries, bits, probes := r.u32(), r.u32(), r.u32()
	if r.err != nil {
		return fmt.Errorf("%w: bloom filter: %v", errSyncMsg, r.err)
	}
	switch {
	case entries == 0:
		return fmt.Errorf("%w: bloom filter of no entries is not empty", errSyncMsg)
	case bits == 0 || bits > maxBloomBitsPerEntry:
		return fmt.Errorf("%w: bloom filter with %d bits per entry", errSyncMsg, bits)
	case probes == 0 || probes > maxBloomProbes:
		return fmt.Errorf("%w: bloom filter with %d probes", errSyncMsg, probes)
	}
	want := uint64(math.Ceil(float64(entries) * float64(bits) / 8))
	if uint64(len(r.b)) != want {
		return fmt.Errorf("%w: bloom filter declares %d bytes of bits, has %d", errSyncMsg, want, len(r.b))
	}
	return nil
}

// encodeV1 encodes the message as a version 1 message without changes or
// flags: what automerge-go is given.
func (m *syncMessage) encodeV1() []byte {
	out := []byte{syncMsgV1}
	out = appendHashes(out, m.heads)
	out = appendHashes(out, m.need)
	out = binary.AppendUvarint(out, uint64(len(m.have)))
	for _, h := range m.have {
		out = appendHashes(out, h.lastSync)
		out = binary.AppendUvarint(out, uint64(len(h.bloom)))
		out = append(out, h.bloom...)
	}
	return binary.AppendUvarint(out, 0) // no changes
}

// changeData returns the message's changes as one byte stream, as stored.
func (m *syncMessage) changeData() []byte {
	return bytes.Join(m.changes, nil)
}

func appendHashes(out []byte, hs []crdt.Hash) []byte {
	// automerge expects sorted hash lists.
	hs = slices.Clone(hs)
	slices.SortFunc(hs, func(a, b crdt.Hash) int { return bytes.Compare(a[:], b[:]) })
	out = binary.AppendUvarint(out, uint64(len(hs)))
	for _, h := range hs {
		out = append(out, h[:]...)
	}
	return out
}

// syncReader reads LEB128 fields, keeping the first error.
type syncReader struct {
	b   []byte
	err error
}

func (r *syncReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: "+format, append([]any{errSyncMsg}, args...)...)
	}
}

func (r *syncReader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.fail("empty")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *syncReader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad %s", what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *syncReader) u32() uint32 {
	v := r.uvarint("number")
	if v > math.MaxUint32 {
		r.fail("number %d over 32 bits", v)
	}
	return uint32(v)
}

// count reads a count of items that each take at least minSize bytes, and
// refuses one the rest of the message cannot hold.
func (r *syncReader) count(what string, minSize int) uint64 {
	n := r.uvarint(what + " count")
	if r.err == nil && n > uint64(len(r.b)/minSize) {
		r.fail("%d %s declared, %d bytes remain", n, what, len(r.b))
	}
	if r.err != nil {
		return 0
	}
	return n
}

func (r *syncReader) hashes(what string) []crdt.Hash {
	n := r.count(what, crdt.HashSize)
	if r.err != nil || n == 0 {
		return nil
	}
	hs := make([]crdt.Hash, n)
	for i := range hs {
		hs[i] = crdt.Hash(r.b[:crdt.HashSize])
		r.b = r.b[crdt.HashSize:]
	}
	return hs
}

func (r *syncReader) bytes(what string) []byte {
	n := r.uvarint(what + " length")
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail("%s of %d bytes, %d remain", what, n, len(r.b))
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}
