package replica

import (
	"encoding/binary"
	"fmt"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/transport"
)

// Key layout. Collection names cannot hold NUL and record IDs cannot either,
// so NUL separates them and prefix scans stay within one collection.
//
//	m/format              store format version (uint32, big-endian)
//	m/id                  replica ID
//	k/<coll>              the collection holds records (empty value)
//	r/<coll>\0<id>        record meta (see meta)
//	v/<coll>\0<id>        the record's read model (see view.go)
//	x/<coll>\0<name>      a secondary index's definition (JSON; see index.go)
//	i/<coll>\0<name>\0<values><id>  an index entry (value: the ID); values past 1 KiB are cut (see indexValueBound)
//	s/<coll>\0<id>        snapshot: the document saved whole
//	c/<coll>\0<id>\0<n>   incremental chunk n (uint64, big-endian)
//	p/<coll>\0<id>        pending: the record has changes the relay has not acknowledged
//	a/<coll>\0<id>        heads the relay last acknowledged
//	q/<coll>\0<id>        quarantine: the relay's changes held back by a failed merge hook (see quarantine.go)
//	l/<coll>\0<id>        the record holds a conflict resolution that only a leased sync may push
//	f/<profile>           sync profile (JSON)
//	y/<profile>\0<coll>   sync state of a profile's collection: cursor, relay incarnation (JSON)
//	z/<profile>           statistics of the profile's last sync (JSON)
const (
	// formatVersion 2 adds the read models (v/). A store of format 1
	// opens, and its records' read models are built then (see upgrade);
	// an older Ferry, which would write records without updating them,
	// refuses format 2. formatVersion 3 cuts index entries to
	// indexValueBound bytes of values (see index.go); a store of format 2
	// has its longer entries cut when it opens.
	formatVersion = 3

	maxCollection = 64
)

var (
	keyFormat = []byte("m/format")
	keyID     = []byte("m/id")
)

func recKey(prefix byte, coll, id string) []byte {
	k := make([]byte, 0, 2+len(coll)+1+len(id))
	k = append(k, prefix, '/')
	k = append(k, coll...)
	k = append(k, 0)
	return append(k, id...)
}

func collPrefix(prefix byte, coll string) []byte {
	k := make([]byte, 0, 3+len(coll))
	k = append(k, prefix, '/')
	k = append(k, coll...)
	return append(k, 0)
}

func chunkKey(coll, id string, n uint64) []byte {
	k := recKey('c', coll, id)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, n)
}

func chunkPrefix(coll, id string) []byte {
	return append(recKey('c', coll, id), 0)
}

// ValidateCollection reports whether name may name a collection: 1 to 64
// bytes of ASCII letters, digits, '_', '-' and '.', starting with a letter
// or digit.
func ValidateCollection(name string) error {
	if name == "" || len(name) > maxCollection {
		return fmt.Errorf("%w: collection name must be 1 to %d bytes, got %d", ErrInvalidName, maxCollection, len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '_' || c == '-' || c == '.')
		if !ok {
			return fmt.Errorf("%w: collection name %q: byte %d (%q) not allowed", ErrInvalidName, name, i, c)
		}
	}
	return nil
}

// ValidateID reports whether id may name a record: the wire's rule,
// transport.ValidateRecordID (1 to 256 bytes of valid UTF-8 with no control
// characters).
func ValidateID(id string) error {
	if err := transport.ValidateRecordID(id); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidName, err)
	}
	return nil
}

// meta is a record's bookkeeping, stored beside its document so scans and
// writes need not load the document.
type meta struct {
	deleted    bool
	heads      crdt.Heads
	nextChunk  uint64 // number of the next chunk to write
	chunks     int    // chunks since the snapshot
	chunkBytes int
	snapBytes  int
}

const metaVersion = 1

func (m meta) encode() []byte {
	b := []byte{metaVersion, 0}
	if m.deleted {
		b[1] = 1
	}
	b = binary.AppendUvarint(b, m.nextChunk)
	b = binary.AppendUvarint(b, uint64(m.chunks))
	b = binary.AppendUvarint(b, uint64(m.chunkBytes))
	b = binary.AppendUvarint(b, uint64(m.snapBytes))
	return append(b, m.heads.Bytes()...)
}

func decodeMeta(b []byte) (meta, error) {
	var m meta
	if len(b) < 2 || b[0] != metaVersion {
		return m, fmt.Errorf("ferry: record meta: unknown version")
	}
	m.deleted = b[1] == 1
	b = b[2:]
	var vals [4]uint64
	for i := range vals {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return m, fmt.Errorf("ferry: record meta: truncated")
		}
		vals[i], b = v, b[n:]
	}
	m.nextChunk, m.chunks, m.chunkBytes, m.snapBytes = vals[0], int(vals[1]), int(vals[2]), int(vals[3])
	h, err := crdt.HeadsFromBytes(b)
	if err != nil {
		return m, fmt.Errorf("ferry: record meta: %w", err)
	}
	m.heads = h
	return m, nil
}
