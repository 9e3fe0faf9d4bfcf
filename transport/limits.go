package transport

import "fmt"

// Default limits. A relay advertises its own in welcome; both sides refuse
// what exceeds the limits they were configured with.
const (
	DefaultMaxFrame  = 4 << 20 // bytes in one WebSocket message, envelope included
	DefaultMaxBatch  = 1000    // records in one changes, live, push or ack
	DefaultMaxRecord = 1 << 20 // bytes of Automerge data in one record
	DefaultMaxDepth  = 32      // msgpack nesting; the protocol itself needs 5
	// DefaultMaxItems bounds the array elements plus map entries of one
	// frame. A full batch of 1,000 records with a few heads each needs about
	// 10,000; the bound exists because each element, one byte on the wire,
	// can cost ~100 bytes once decoded into Go values.
	DefaultMaxItems = 1 << 16
	// DefaultMaxInflated is max_inflated's default: that of max_record, the
	// most one record may hold uncompressed. A zero MaxInflated follows
	// MaxRecord, whatever its value.
	DefaultMaxInflated = DefaultMaxRecord
	// DefaultMaxRecordOps bounds the Automerge operations of one record.
	// A loaded document takes some 800 to 1,100 bytes per operation,
	// whatever its saved size, so this bounds a record loaded in memory at
	// about 200 MiB.
	DefaultMaxRecordOps = 200_000
)

// Room a message needs besides its records' data, for senders that fill a
// frame: FrameOverhead for the envelope and one record's keys, ID and
// heads; RecordOverhead for the keys and headers of each further record
// (its ID and heads not included). MaxFrame must exceed MaxRecord by
// FrameOverhead at least (see Limits.Check), so that a record of any
// allowed size can always be sent alone.
const (
	FrameOverhead  = 64 << 10
	RecordOverhead = 64
)

// HeadSize is the length of an Automerge change hash.
const HeadSize = 32

// Limits bound what a peer may send. The zero value of a field means its
// default. Limits is also the limits field of welcome, so its msgpack names
// are part of the protocol.
type Limits struct {
	MaxFrame  int `msgpack:"max_frame"`
	MaxBatch  int `msgpack:"max_batch"`
	MaxRecord int `msgpack:"max_record"`
	MaxDepth  int `msgpack:"max_depth"`
	MaxItems  int `msgpack:"max_items"`
	// MaxInflated bounds the bytes one push may inflate from compressed
	// Automerge data (compressed change chunks and columns), all its
	// records together, so a few kilobytes of DEFLATE cannot claim
	// gigabytes. The relay handles one request of a connection at a time,
	// so this is also the bound per connection. Zero: MaxRecord.
	MaxInflated int `msgpack:"max_inflated"`
	// MaxRecordOps bounds the Automerge operations one record may hold,
	// what it costs in memory once loaded (its bytes do not tell: a few
	// kilobytes may hold a document of hundreds of megabytes), the bytes
	// of the values its history set counted as one operation per 326. The
	// relay refuses a push that would bring a record past it.
	MaxRecordOps int `msgpack:"max_record_ops"`
}

// DefaultLimits returns the default limits.
func DefaultLimits() Limits {
	return Limits{
		MaxFrame:  DefaultMaxFrame,
		MaxBatch:  DefaultMaxBatch,
		MaxRecord: DefaultMaxRecord,
		MaxDepth:  DefaultMaxDepth,
		MaxItems:  DefaultMaxItems,

		MaxInflated:  DefaultMaxInflated,
		MaxRecordOps: DefaultMaxRecordOps,
	}
}

// WithDefaults returns l with every zero or negative field set to its
// default.
func (l Limits) WithDefaults() Limits {
	d := DefaultLimits()
	if l.MaxFrame <= 0 {
		l.MaxFrame = d.MaxFrame
	}
	if l.MaxBatch <= 0 {
		l.MaxBatch = d.MaxBatch
	}
	if l.MaxRecord <= 0 {
		l.MaxRecord = d.MaxRecord
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = d.MaxDepth
	}
	if l.MaxItems <= 0 {
		l.MaxItems = d.MaxItems
	}
	if l.MaxInflated <= 0 {
		l.MaxInflated = l.MaxRecord
	}
	if l.MaxRecordOps <= 0 {
		l.MaxRecordOps = d.MaxRecordOps
	}
	return l
}

// Check reports whether l (zero fields meaning defaults) is a consistent
// set: a frame must hold a record of MaxRecord bytes alone, with
// FrameOverhead to spare, or a record the relay accepted could never be
// sent to a device. Relays and their configuration call it.
func (l Limits) Check() error {
	l = l.WithDefaults()
	if l.MaxFrame < l.MaxRecord+FrameOverhead {
		return fmt.Errorf("transport: max_frame %d must be at least max_record %d + %d bytes of envelope", l.MaxFrame, l.MaxRecord, FrameOverhead)
	}
	return nil
}

// Validate checks a body against l (zero fields meaning defaults): counts
// and sizes within the limits, required fields present, heads of HeadSize
// bytes. It returns an *Error: CodeTooLarge for a limit, CodeBadFrame for
// anything else. A server replies with that error to the request; the
// connection stays usable.
func (l Limits) Validate(b Body) error {
	l = l.WithDefaults()
	return b.validate(&l)
}

func (l *Limits) checkRecords(n int) error {
	if n > l.MaxBatch {
		return errorf(CodeTooLarge, "%d records exceed max_batch %d", n, l.MaxBatch)
	}
	return nil
}

func (l *Limits) checkData(record string, n int) error {
	if n > l.MaxRecord {
		return errorf(CodeTooLarge, "record %q: %d bytes of data exceed max_record %d", record, n, l.MaxRecord)
	}
	return nil
}

func checkHeads(record string, heads [][]byte) error {
	for i, h := range heads {
		if len(h) != HeadSize {
			return errorf(CodeBadFrame, "record %q: head %d is %d bytes, want %d", record, i, len(h), HeadSize)
		}
	}
	return nil
}

func checkCollection(c string) error {
	if c == "" {
		return errorf(CodeBadFrame, "empty collection")
	}
	return nil
}
