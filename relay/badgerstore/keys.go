package badgerstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// Key layout of a Store. One Badger DB holds every tenant. Tenant and
// collection names hold no NUL, and record IDs no control character, so NUL
// ends each of them and a prefix scan of one collection (or record) never
// strays into another ("a" vs "ab"); sequence numbers are big-endian so keys
// sort in log order.
//
//	meta\0format                            store format version (uint32)
//	meta\0incarnation                       incarnation ID (UUID text)
//	head\0<tenant>\0<coll>                  log head: last sequence number (uint64)
//	horizon\0<tenant>\0<coll>               log entries up to it are truncated (uint64)
//	fence\0<tenant>\0<coll>                 highest fence ever granted (uint64); never decreases
//	lease\0<tenant>\0<coll>                 current lease (see encodeLease); absent when released
//	usage\0<tenant>\0<coll>                 the collection's stored bytes and records (see encodeUsage)
//	log\0<tenant>\0<coll>\0<seq>            log entry seq (see encodeLogEntry)
//	rec\0<tenant>\0<coll>\0<record>         record meta (see recMeta)
//	snap\0<tenant>\0<coll>\0<record>        the record's snapshot, a saved document
//	tail\0<tenant>\0<coll>\0<record>\0<seq> a log entry in the record's tail; value: its changes' length (uvarint)
//	cand\0<tenant>\0<coll>\0<record>        the record needs compacting (empty)
//	pending\0<tenant>\0<coll>               an append split across transactions is being
//	                                        written: its first and last sequence numbers
//	                                        (uint64 each); see appendSplit
//
// Integers in keys and in the head, horizon and fence values are
// big-endian. Format 1 kept each record's whole document under
// doc\0<tenant>\0<coll>\0<record>; opening such a store migrates it.
const badgerFormat = 2

var (
	keyFormat      = []byte("meta\x00format")
	keyIncarnation = []byte("meta\x00incarnation")
	prefixHead     = []byte("head\x00")
	prefixHorizon  = []byte("horizon\x00")
	prefixFence    = []byte("fence\x00")
	prefixLease    = []byte("lease\x00")
	prefixCand     = []byte("cand\x00")
	prefixPending  = []byte("pending\x00")
	prefixDocV1    = []byte("doc\x00")
)

// collKey is kind\0tenant\0coll; collPrefix adds the NUL that starts a
// per-collection suffix.
func collKey(kind string, c relay.Coll) []byte {
	k := make([]byte, 0, len(kind)+len(c.Tenant)+len(c.Collection)+12)
	k = append(k, kind...)
	k = append(k, 0)
	k = append(k, c.Tenant...)
	k = append(k, 0)
	return append(k, c.Collection...)
}

func collPrefix(kind string, c relay.Coll) []byte { return append(collKey(kind, c), 0) }

func logKey(c relay.Coll, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(collPrefix("log", c), seq)
}

func recKey(kind string, c relay.Coll, record string) []byte {
	return append(collPrefix(kind, c), record...)
}

func tailPrefix(c relay.Coll, record string) []byte { return append(recKey("tail", c, record), 0) }

func tailKey(c relay.Coll, record string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(tailPrefix(c, record), seq)
}

// splitCollKey splits kind\0tenant\0coll\0rest into the collection and
// rest.
func splitCollKey(k []byte) (relay.Coll, string, bool) {
	parts := bytes.SplitN(k, []byte{0}, 4)
	if len(parts) != 4 {
		return relay.Coll{}, "", false
	}
	return relay.Coll{Tenant: string(parts[1]), Collection: string(parts[2])}, string(parts[3]), true
}

// splitPendingKey returns the collection of a pending\0tenant\0coll key.
func splitPendingKey(k []byte) (relay.Coll, bool) {
	parts := bytes.SplitN(k, []byte{0}, 3)
	if len(parts) != 3 || bytes.IndexByte(parts[2], 0) >= 0 {
		return relay.Coll{}, false
	}
	return relay.Coll{Tenant: string(parts[1]), Collection: string(parts[2])}, true
}

// Values start with a version byte so their encoding can change later.
// Variable fields are uvarint-length-prefixed; the last field runs to the
// end of the value, so the big one (changes, document) is never copied to
// find its length.
const valueVersion = 1

// errCorrupt marks a stored value this version cannot decode: the store is
// damaged.
var errCorrupt = fmt.Errorf("%w: corrupt store value", relay.ErrStoreDamaged)

// encodeLogEntry: version, record, heads, changes.
func encodeLogEntry(e relay.Entry) []byte {
	h := e.Heads.Bytes()
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(e.Record)+len(h)+len(e.Changes))
	b = append(b, valueVersion)
	b = appendField(b, []byte(e.Record))
	b = appendField(b, h)
	return append(b, e.Changes...)
}

func decodeLogEntry(seq uint64, v []byte) (relay.LogEntry, error) {
	d := newDecoder(v)
	rec, hb := d.field(), d.field()
	heads, err := d.heads(hb)
	if err != nil {
		return relay.LogEntry{}, fmt.Errorf("log entry %d: %w", seq, err)
	}
	return relay.LogEntry{Seq: seq, Record: string(rec), Changes: bytes.Clone(d.b), Heads: heads}, nil
}

// recMeta is a record's bookkeeping, beside its snapshot and tail.
type recMeta struct {
	seq         uint64 // the record's last log entry
	snapSeq     uint64 // the last entry the snapshot holds
	snapBytes   int64
	tailBytes   int64
	tailEntries int64
	heads       crdt.Heads
}

// encode: version, seq, snapSeq, snapBytes, tailBytes, tailEntries, heads.
func (m recMeta) encode() []byte {
	b := []byte{valueVersion}
	for _, x := range []uint64{m.seq, m.snapSeq, uint64(m.snapBytes), uint64(m.tailBytes), uint64(m.tailEntries)} {
		b = binary.AppendUvarint(b, x)
	}
	return append(b, m.heads.Bytes()...)
}

func decodeRecMeta(v []byte) (recMeta, error) {
	d := newDecoder(v)
	m := recMeta{seq: d.uvarint(), snapSeq: d.uvarint(), snapBytes: int64(d.uvarint()), tailBytes: int64(d.uvarint()), tailEntries: int64(d.uvarint())}
	heads, err := d.heads(d.b)
	if err != nil {
		return recMeta{}, fmt.Errorf("record meta: %w", err)
	}
	m.heads = heads
	return m, nil
}

// usage: version, bytes, records.
func encodeUsage(u relay.Usage) []byte {
	b := binary.AppendUvarint([]byte{valueVersion}, uint64(u.Bytes))
	return binary.AppendUvarint(b, uint64(u.Records))
}

func decodeUsage(v []byte) (relay.Usage, error) {
	d := newDecoder(v)
	u := relay.Usage{Bytes: int64(d.uvarint()), Records: int64(d.uvarint())}
	if d.err != nil {
		return relay.Usage{}, fmt.Errorf("usage: %w", d.err)
	}
	return u, nil
}

// decodeDocV1 reads a format-1 document value: version, seq, heads,
// document.
func decodeDocV1(v []byte) (seq uint64, heads crdt.Heads, doc []byte, err error) {
	d := newDecoder(v)
	seq = d.uvarint()
	hb := d.field()
	if heads, err = d.heads(hb); err != nil {
		return 0, nil, nil, fmt.Errorf("document: %w", err)
	}
	return seq, heads, bytes.Clone(d.b), nil
}

// encodeLease: version, fence, expiry (Unix nanoseconds), holder.
func encodeLease(l relay.Lease) []byte {
	b := []byte{valueVersion}
	b = binary.AppendUvarint(b, l.Fence)
	b = binary.AppendVarint(b, l.Expires.UnixNano())
	return append(b, l.Holder...)
}

func decodeLease(v []byte) (relay.Lease, error) {
	d := newDecoder(v)
	fence := d.uvarint()
	exp := d.varint()
	if d.err != nil {
		return relay.Lease{}, fmt.Errorf("lease: %w", d.err)
	}
	return relay.Lease{Holder: string(d.b), Fence: fence, Expires: time.Unix(0, exp)}, nil
}

func appendField(b, f []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(f))), f...)
}

// decoder reads a value; the first error sticks and later reads return zero.
type decoder struct {
	b   []byte
	err error
}

func newDecoder(v []byte) *decoder {
	if len(v) == 0 || v[0] != valueVersion {
		return &decoder{err: fmt.Errorf("%w: unknown value version", errCorrupt)}
	}
	return &decoder{b: v[1:]}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%w: truncated value", errCorrupt)
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = fmt.Errorf("%w: truncated value", errCorrupt)
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *decoder) field() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = fmt.Errorf("%w: truncated value", errCorrupt)
		return nil
	}
	f := d.b[:n]
	d.b = d.b[n:]
	return f
}

func (d *decoder) heads(b []byte) (crdt.Heads, error) {
	if d.err != nil {
		return nil, d.err
	}
	return crdt.HeadsFromBytes(b)
}

func getUint64(txn *badger.Txn, key []byte) (uint64, error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var x uint64
	err = item.Value(func(v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("%w: key %q holds %d bytes, want 8", errCorrupt, key, len(v))
		}
		x = binary.BigEndian.Uint64(v)
		return nil
	})
	return x, err
}

func putUint64(txn *badger.Txn, key []byte, x uint64) error {
	return txn.Set(key, binary.BigEndian.AppendUint64(nil, x))
}

// getLease returns the collection's lease; ok is false when there is none.
func getLease(txn *badger.Txn, c relay.Coll) (l relay.Lease, ok bool, err error) {
	item, err := txn.Get(collKey("lease", c))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return relay.Lease{}, false, nil
	}
	if err != nil {
		return relay.Lease{}, false, err
	}
	err = item.Value(func(v []byte) error {
		l, err = decodeLease(v)
		return err
	})
	return l, err == nil, err
}

// getRecMeta returns a record's meta; ok is false when the store does not
// hold the record.
func getRecMeta(txn *badger.Txn, c relay.Coll, record string) (m recMeta, ok bool, err error) {
	item, err := txn.Get(recKey("rec", c, record))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return recMeta{}, false, nil
	}
	if err != nil {
		return recMeta{}, false, err
	}
	err = item.Value(func(v []byte) error {
		m, err = decodeRecMeta(v)
		return err
	})
	return m, err == nil, err
}
