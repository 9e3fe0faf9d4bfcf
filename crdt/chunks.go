package crdt

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// Automerge's binary format is a sequence of chunks:
// magic(4) checksum(4) type(1) uLEB128 length, then the payload. The checksum
// is the first 4 bytes of SHA-256 over type, length and payload; for a change
// chunk that SHA-256 is the change's hash. A compressed change chunk carries
// the DEFLATE of a change chunk's payload, with that change's checksum.
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

// maxInflated bounds the size of one compressed chunk or column once
// inflated, so a few hostile bytes cannot claim gigabytes. Callers that
// frame bytes from many peers at once bound the total with an
// InflateBudget as well.
const maxInflated = 64 << 20

// InflateBudget bounds the bytes that framing may inflate from DEFLATE
// (compressed change chunks, compressed columns) across every call it is
// given to: ParseChangesWithin charges what it inflates, and fails with
// [ErrInflateLimit] before inflating past what is left. A relay gives one
// budget to all the records of a push.
//
// An InflateBudget is not safe for concurrent use.
type InflateBudget struct {
	left int64
}

// NewInflateBudget returns a budget of n bytes.
func NewInflateBudget(n int64) *InflateBudget { return &InflateBudget{left: max(n, 0)} }

// remaining returns the bytes that may still be inflated.
func (b *InflateBudget) remaining() int64 { return b.left }

// inflate undoes raw DEFLATE within b (nil: maxInflated alone), and charges
// what it produced.
func (b *InflateBudget) inflate(data []byte) ([]byte, error) {
	if b == nil || b.left >= maxInflated {
		out, err := inflate(data, maxInflated)
		if err == nil && b != nil {
			b.left -= int64(len(out))
		}
		return out, err
	}
	out, err := inflate(data, b.left)
	if errors.Is(err, errInflatesPast) {
		b.left = 0
		return nil, fmt.Errorf("%w (%w)", ErrInflateLimit, err)
	}
	if err != nil {
		return nil, err
	}
	b.left -= int64(len(out))
	return out, nil
}

// ChangeInfo describes one change found in a byte stream.
type ChangeInfo struct {
	Hash Hash
	Deps []Hash
}

// chunkInfo is what framing learns about a stream.
type chunkInfo struct {
	changes   []ChangeInfo // change chunks (compressed or not), in stream order
	authors   []author     // who made each of changes
	payloads  [][]byte     // each change's payload (inflated if it was compressed)
	documents int          // whole-document chunks
	docHeads  []Hash       // the heads each document chunk declares
	docOps    uint64       // the operations the document chunks hold
}

// ParseChanges frames b as Automerge chunks and returns the changes it
// carries, with their hashes and dependencies. It does not apply them. A
// whole-document chunk is accepted but not listed. Any byte that is not
// part of a whole, checksummed chunk is an [ErrCorrupt].
func ParseChanges(b []byte) ([]ChangeInfo, error) {
	return ParseChangesWithin(b, nil)
}

// ParseChangesWithin is ParseChanges inflating no more than budget allows
// (nil: no budget but the fixed bound per chunk). Past it, the error is an
// [ErrInflateLimit], not an [ErrCorrupt]: the bytes may be valid, only too
// large once inflated.
func ParseChangesWithin(b []byte, budget *InflateBudget) ([]ChangeInfo, error) {
	ci, err := frameWithin(b, budget)
	if err != nil {
		return nil, err
	}
	return ci.changes, nil
}

func frame(b []byte) (chunkInfo, error) { return frameWithin(b, nil) }

// corruptf reports a chunk that failed a check: ErrCorrupt, unless the
// check ran out of inflation budget.
func corruptf(err error, format string, args ...any) error {
	if errors.Is(err, ErrInflateLimit) {
		return fmt.Errorf(format+": %w", append(args, err)...)
	}
	return fmt.Errorf("%w: "+format+": %v", append(append([]any{ErrCorrupt}, args...), err)...)
}

func frameWithin(b []byte, budget *InflateBudget) (chunkInfo, error) {
	var ci chunkInfo
	if n := countChunks(b); n > 0 {
		ci.changes = make([]ChangeInfo, 0, n)
		ci.authors = make([]author, 0, n)
		ci.payloads = make([][]byte, 0, n)
	}
	var actors actorNames
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
		if typ != chunkDocument && ln != len(binary.AppendUvarint(nil, n)) {
			// Automerge refuses the header (and hashes a change as if its
			// length were minimal): refuse it before anything is applied.
			return ci, fmt.Errorf("%w: chunk at byte %d has a non-minimal length", ErrCorrupt, off)
		}
		hdr := 9 + ln
		if n > uint64(len(rest)-hdr) {
			return ci, fmt.Errorf("%w: chunk at byte %d declares %d bytes, %d remain (truncated)", ErrCorrupt, off, n, len(rest)-hdr)
		}
		end := hdr + int(n)
		var sum [sha256.Size]byte
		payload := rest[hdr:end]
		switch typ {
		case chunkDocument, chunkChange:
			sum = sha256.Sum256(rest[8:end])
		case chunkCompressed:
			var err error
			if payload, err = budget.inflate(payload); err != nil {
				return ci, corruptf(err, "compressed chunk at byte %d", off)
			}
			sum = changeHash(payload)
		default:
			return ci, fmt.Errorf("%w: unknown chunk type %d at byte %d", ErrCorrupt, typ, off)
		}
		if !bytes.Equal(sum[:4], rest[4:8]) {
			return ci, fmt.Errorf("%w: checksum mismatch in chunk at byte %d", ErrCorrupt, off)
		}
		if typ == chunkDocument {
			heads, ops, err := checkDocument(payload, budget)
			if err != nil {
				return ci, corruptf(err, "document at byte %d", off)
			}
			ci.docOps += ops
			ci.documents++
			ci.docHeads = append(ci.docHeads, heads...)
		} else {
			deps, who, err := changeHeader(payload, budget, &actors)
			if err != nil {
				return ci, corruptf(err, "change at byte %d", off)
			}
			ci.changes = append(ci.changes, ChangeInfo{Hash: Hash(sum), Deps: deps})
			ci.authors = append(ci.authors, who)
			ci.payloads = append(ci.payloads, payload)
		}
		off += end
	}
	return ci, nil
}

// countChunks counts the chunks b appears to hold, reading only their
// lengths, to size what framing collects (framing checks them).
func countChunks(b []byte) int {
	n := 0
	for off := 0; off+9 < len(b) && n < 1<<16; n++ {
		l, ln := binary.Uvarint(b[off+9:])
		if ln <= 0 || l > uint64(len(b)) {
			break
		}
		off += 9 + ln + int(l)
	}
	return n
}

// actorNames spells the actors of a stream's changes in hex, once per
// actor: a stream usually holds many changes of the same few.
type actorNames struct {
	last []byte
	name string
}

func (a *actorNames) of(id []byte) string {
	if a.name == "" || !bytes.Equal(id, a.last) {
		a.last, a.name = id, hex.EncodeToString(id)
	}
	return a.name
}

// changeHash is the hash of the change chunk with this payload.
func changeHash(payload []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte{chunkChange})
	h.Write(binary.AppendUvarint(nil, uint64(len(payload))))
	h.Write(payload)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

var errInflatesPast = errors.New("inflates past its limit")

// inflate undoes raw DEFLATE, refusing output past limit bytes: it stops
// reading at limit+1.
func inflate(b []byte, limit int64) ([]byte, error) {
	r := flate.NewReader(bytes.NewReader(b))
	defer r.Close()
	out, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > limit {
		return nil, fmt.Errorf("%w of %d bytes", errInflatesPast, limit)
	}
	return out, nil
}

// inflatedSize is the length of what b inflates to, at most limit,
// counted as it inflates and not kept.
func inflatedSize(b []byte, limit int64) (int64, error) {
	r := flate.NewReader(bytes.NewReader(b))
	defer r.Close()
	n, err := io.Copy(io.Discard, io.LimitReader(r, limit+1))
	if err != nil {
		return 0, err
	}
	if n > limit {
		return 0, fmt.Errorf("%w of %d bytes", errInflatesPast, limit)
	}
	return n, nil
}

// author is the actor that made a change, and the change's sequence number
// among that actor's changes (1, 2, ...).
type author struct {
	actor string // hex, as automerge-go spells actor IDs
	seq   uint64
}

// changeHeader reads what opens a change chunk's payload: the dependency
// list, the actor and the sequence number; and checks the rest (see
// checkChangeOps).
func changeHeader(p []byte, budget *InflateBudget, actors *actorNames) ([]Hash, author, error) {
	deps, p, err := hashList(p, "dependencies")
	if err != nil {
		return nil, author{}, err
	}
	n, ln := binary.Uvarint(p)
	if ln <= 0 || n > uint64(len(p)-ln) {
		return nil, author{}, fmt.Errorf("bad actor")
	}
	actor := actors.of(p[ln : ln+int(n)])
	p = p[ln+int(n):]
	seq, ln := binary.Uvarint(p)
	if ln <= 0 || seq == 0 {
		return nil, author{}, fmt.Errorf("bad sequence number")
	}
	if err := checkChangeOps(p[ln:], budget); err != nil {
		return nil, author{}, err
	}
	return deps, author{actor: actor, seq: seq}, nil
}

// hashList reads a uLEB128 count followed by that many hashes, and returns
// them with the bytes after them.
func hashList(p []byte, what string) ([]Hash, []byte, error) {
	n, ln := binary.Uvarint(p)
	if ln <= 0 {
		return nil, nil, fmt.Errorf("bad %s count", what)
	}
	p = p[ln:]
	if n > uint64(len(p)/HashSize) {
		return nil, nil, fmt.Errorf("%d %s declared, room for %d", n, what, len(p)/HashSize)
	}
	hs := make([]Hash, n)
	for i := range hs {
		hs[i] = Hash(p[:HashSize])
		p = p[HashSize:]
	}
	return hs, p, nil
}
