package crdt

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// Automerge's binary format is a sequence of chunks:
// magic(4) checksum(4) type(1) uLEB128 length, then the payload. The checksum
// is the first 4 bytes of SHA-256 over type, length and payload; for a change
// chunk that SHA-256 is the change's hash.
//
// automerge-go's LoadIncremental stops silently at the first bytes it cannot
// parse (it discards how many it read), so a truncated delta or a valid chunk
// followed by garbage would be accepted in part. Every import is therefore
// framed here first: whole chunks only, checksums verified.

var chunkMagic = []byte{0x85, 0x6f, 0x4a, 0x83}

const (
	chunkDocument   = 0
	chunkChange     = 1
	chunkCompressed = 2
)

// ChangeInfo describes one change found in a byte stream.
type ChangeInfo struct {
	Hash Hash
	Deps []Hash
}

// chunkInfo is what framing learns about a stream.
type chunkInfo struct {
	changes   []ChangeInfo // uncompressed change chunks, in stream order
	documents int          // whole-document chunks
	docHeads  []Hash       // the heads each document chunk declares
	opaque    int          // compressed change chunks (hash not computed)
}

// ParseChanges frames b as Automerge chunks and returns the changes it
// carries, with their hashes and dependencies. It does not apply them. A
// whole-document chunk or a compressed change chunk is accepted but not
// listed. Any byte that is not part of a whole, checksummed chunk is an
// [ErrCorrupt].
func ParseChanges(b []byte) ([]ChangeInfo, error) {
	ci, err := frame(b)
	if err != nil {
		return nil, err
	}
	return ci.changes, nil
}

func frame(b []byte) (chunkInfo, error) {
	var ci chunkInfo
	for off := 0; off < len(b); {
		rest := b[off:]
		if len(rest) < 9 || !bytes.Equal(rest[:4], chunkMagic) {
			return ci, fmt.Errorf("%w: no chunk header at byte %d", ErrCorrupt, off)
		}
		typ := rest[8]
		n, ln := binary.Uvarint(rest[9:])
		if ln <= 0 {
			return ci, fmt.Errorf("%w: bad chunk length at byte %d", ErrCorrupt, off)
		}
		hdr := 9 + ln
		if n > uint64(len(rest)-hdr) {
			return ci, fmt.Errorf("%w: chunk at byte %d declares %d bytes, %d remain (truncated)", ErrCorrupt, off, n, len(rest)-hdr)
		}
		end := hdr + int(n)
		switch typ {
		case chunkDocument, chunkChange:
			sum := sha256.Sum256(rest[8:end])
			if !bytes.Equal(sum[:4], rest[4:8]) {
				return ci, fmt.Errorf("%w: checksum mismatch in chunk at byte %d", ErrCorrupt, off)
			}
			if typ == chunkDocument {
				heads, err := documentHeads(rest[hdr:end])
				if err != nil {
					return ci, fmt.Errorf("%w: document at byte %d: %v", ErrCorrupt, off, err)
				}
				ci.documents++
				ci.docHeads = append(ci.docHeads, heads...)
				break
			}
			deps, err := changeDeps(rest[hdr:end])
			if err != nil {
				return ci, fmt.Errorf("%w: change at byte %d: %v", ErrCorrupt, off, err)
			}
			ci.changes = append(ci.changes, ChangeInfo{Hash: Hash(sum), Deps: deps})
		case chunkCompressed:
			// The checksum covers the uncompressed change; automerge verifies
			// it when it inflates the chunk.
			ci.opaque++
		default:
			return ci, fmt.Errorf("%w: unknown chunk type %d at byte %d", ErrCorrupt, typ, off)
		}
		off += end
	}
	return ci, nil
}

// changeDeps reads the dependency list that opens a change chunk's payload.
func changeDeps(p []byte) ([]Hash, error) { return hashList(p, "dependencies") }

// hashList reads a uLEB128 count followed by that many hashes.
func hashList(p []byte, what string) ([]Hash, error) {
	n, ln := binary.Uvarint(p)
	if ln <= 0 {
		return nil, fmt.Errorf("bad %s count", what)
	}
	p = p[ln:]
	if n > uint64(len(p)/HashSize) {
		return nil, fmt.Errorf("%d %s declared, room for %d", n, what, len(p)/HashSize)
	}
	deps := make([]Hash, n)
	for i := range deps {
		deps[i] = Hash(p[:HashSize])
		p = p[HashSize:]
	}
	return deps, nil
}

// documentHeads reads the heads a document chunk's payload declares after
// its actor table.
func documentHeads(p []byte) ([]Hash, error) {
	n, ln := binary.Uvarint(p)
	if ln <= 0 || n > uint64(len(p)) {
		return nil, fmt.Errorf("bad actor count")
	}
	p = p[ln:]
	for range n {
		l, ln := binary.Uvarint(p)
		if ln <= 0 || l > uint64(len(p)-ln) {
			return nil, fmt.Errorf("bad actor")
		}
		p = p[ln+int(l):]
	}
	return hashList(p, "heads")
}
