package crdt

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"slices"
)

// HashSize is the length of a change hash in bytes.
const HashSize = 32

// Hash identifies one Automerge change (its SHA-256).
type Hash [HashSize]byte

// String returns the hash in hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// Heads is the set of changes that no other change in a document depends on:
// the document's version. Heads returned by this package are sorted, so two
// equal versions compare equal with [Heads.Equal].
type Heads []Hash

// Equal reports whether h and o name the same version.
func (h Heads) Equal(o Heads) bool {
	return slices.Equal(sortedHeads(h), sortedHeads(o))
}

// Bytes encodes the heads as their concatenated hashes, for storage and the
// wire.
func (h Heads) Bytes() []byte {
	out := make([]byte, 0, len(h)*HashSize)
	for _, x := range sortedHeads(h) {
		out = append(out, x[:]...)
	}
	return out
}

// HeadsFromBytes decodes [Heads.Bytes].
func HeadsFromBytes(b []byte) (Heads, error) {
	if len(b)%HashSize != 0 {
		return nil, fmt.Errorf("%w: heads of %d bytes are not a multiple of %d", ErrCorrupt, len(b), HashSize)
	}
	h := make(Heads, 0, len(b)/HashSize)
	for i := 0; i < len(b); i += HashSize {
		h = append(h, Hash(b[i:i+HashSize]))
	}
	return sortedHeads(h), nil
}

// HeadsFromSlices decodes heads carried as one byte slice per hash.
func HeadsFromSlices(bs [][]byte) (Heads, error) {
	h := make(Heads, 0, len(bs))
	for _, b := range bs {
		if len(b) != HashSize {
			return nil, fmt.Errorf("%w: change hash of %d bytes, want %d", ErrCorrupt, len(b), HashSize)
		}
		h = append(h, Hash(b))
	}
	return sortedHeads(h), nil
}

// Slices encodes the heads as one byte slice per hash.
func (h Heads) Slices() [][]byte {
	out := make([][]byte, 0, len(h))
	for _, x := range sortedHeads(h) {
		out = append(out, bytes.Clone(x[:]))
	}
	return out
}

func sortedHeads(h Heads) Heads {
	if slices.IsSortedFunc(h, cmpHash) {
		return h
	}
	s := slices.Clone(h)
	slices.SortFunc(s, cmpHash)
	return s
}

func cmpHash(a, b Hash) int { return bytes.Compare(a[:], b[:]) }
