package crdt

import (
	"encoding/binary"
	"errors"
	"math"
	"unicode/utf8"
)

// The column encodings of Automerge's binary format, decoded the way its
// Rust core (as automerge-go bundles it) decodes them and encoded the way it
// encodes them: canonical.go re-encodes a change with these and compares
// the result with the bytes received. The encoders are ports of
// rust/automerge/src/columnar/encoding/{rle,delta,boolean}.rs and must stay
// byte-for-byte faithful to them; the decoders may be stricter than Rust's
// (whatever they refuse is refused), never more lenient in a way that reads
// different values.

var errColumn = errors.New("malformed column")

// appendSLEB appends v as a minimal signed LEB128.
func appendSLEB(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// appendULEB appends v as a minimal unsigned LEB128 (which is what Go's
// uvarint is).
func appendULEB(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

// readSLEB64 reads a signed LEB128 anywhere in int64's range (readSLEB,
// for counts, refuses the one value it cannot negate) and returns it with
// the number of bytes read, or 0 if p does not start with one.
func readSLEB64(p []byte) (int64, int) {
	var v int64
	for i, c := range p {
		if i == 9 {
			// The tenth byte holds bit 63 and the sign: 0x00 or 0x7f
			// (or 0x01 and 0x7e, whose sign disagrees: overflow).
			if c != 0 && c != 0x7f {
				return 0, 0
			}
			return v | int64(c)<<63, i + 1
		}
		v |= int64(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			if c&0x40 != 0 {
				v |= -1 << (7 * (i + 1))
			}
			return v, i + 1
		}
	}
	return 0, 0
}

// reader walks one column's bytes.
type reader struct {
	b   []byte
	err error
}

func (r *reader) done() bool { return len(r.b) == 0 }

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.b = nil
}

func (r *reader) uleb() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(errColumn)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) sleb() int64 {
	v, n := readSLEB(r.b)
	if n <= 0 {
		r.fail(errColumn)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) sleb64() int64 {
	v, n := readSLEB64(r.b)
	if n <= 0 {
		r.fail(errColumn)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(n uint64) []byte {
	if n > uint64(len(r.b)) {
		r.fail(errColumn)
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

// str reads a length-prefixed UTF-8 string, as Rust's SmolStr decoder does.
func (r *reader) str() string {
	b := r.bytes(r.uleb())
	if r.err == nil && !utf8.Valid(b) {
		r.fail(errors.New("string is not UTF-8"))
	}
	return string(b)
}

// maxRun bounds run lengths: no change holds anywhere near this many
// operations, and it keeps the arithmetic below far from overflow.
const maxRun = 1 << 40

// rleDecoder reads a run-length encoded column of T (uint64, int64 or
// string): a signed count c, then one value repeated c times (c > 0), -c
// literal values (c < 0), or a count of nulls (c == 0). It mirrors Rust's
// RleDecoder, except that it refuses runs of zero nulls and absurd counts,
// which Automerge never writes. The zero value reads an empty column.
type rleDecoder[T uint64 | int64 | string] struct {
	r       reader
	left    uint64 // values left in the current run
	literal bool
	null    bool
	last    T
}

func newRLE[T uint64 | int64 | string](b []byte) rleDecoder[T] {
	return rleDecoder[T]{r: reader{b: b}}
}

// read reads one value of T.
func (d *rleDecoder[T]) read() T {
	var v T
	switch p := any(&v).(type) {
	case *uint64:
		*p = d.r.uleb()
	case *int64:
		*p = d.r.sleb()
	case *string:
		*p = d.r.str()
	}
	return v
}

// next returns the next value; ok is false at the end of the column (or on
// error, see err), null marks a null.
func (d *rleDecoder[T]) next() (v T, null, ok bool) {
	for d.left == 0 {
		if d.r.done() || d.r.err != nil {
			return v, false, false
		}
		c := d.r.sleb()
		switch {
		case d.r.err != nil:
			return v, false, false
		case c > 0 && c <= maxRun:
			d.left, d.literal, d.null = uint64(c), false, false
			d.last = d.read()
		case c < 0 && c >= -maxRun:
			d.left, d.literal, d.null = uint64(-c), true, false
		case c == 0:
			n := d.r.uleb()
			if n == 0 || n > maxRun {
				d.r.fail(errColumn)
			}
			d.left, d.literal, d.null = n, false, true
		default:
			d.r.fail(errColumn)
		}
		if d.r.err != nil {
			return v, false, false
		}
	}
	d.left--
	switch {
	case d.literal:
		v = d.read()
		if d.r.err != nil {
			return v, false, false
		}
		return v, false, true
	case d.null:
		return v, true, true
	}
	return d.last, false, true
}

func (d *rleDecoder[T]) err() error { return d.r.err }

// deltaDecoder reads a delta column: an RLE column of signed differences,
// summed (with saturation, as Rust does) from zero.
type deltaDecoder struct {
	rle rleDecoder[int64]
	abs int64
}

func newDelta(b []byte) deltaDecoder { return deltaDecoder{rle: newRLE[int64](b)} }

func (d *deltaDecoder) next() (v int64, null, ok bool) {
	delta, null, ok := d.rle.next()
	if !ok || null {
		return 0, null, ok
	}
	d.abs = saturatingAdd(d.abs, delta)
	return d.abs, false, true
}

func saturatingAdd(a, b int64) int64 {
	s := a + b
	switch {
	case a > 0 && b > 0 && s < 0:
		return math.MaxInt64
	case a < 0 && b < 0 && s >= 0:
		return math.MinInt64
	}
	return s
}

func saturatingSub(a, b int64) int64 {
	if b == math.MinInt64 {
		if a >= 0 {
			return math.MaxInt64
		}
		return a - b
	}
	return saturatingAdd(a, -b)
}

// boolDecoder reads a boolean column: alternating run lengths, starting
// with a run of false.
type boolDecoder struct {
	r     reader
	last  bool
	count uint64
}

func newBool(b []byte) boolDecoder { return boolDecoder{r: reader{b: b}, last: true} }

func (d *boolDecoder) next() (v, ok bool) {
	for d.count == 0 {
		if d.r.done() || d.r.err != nil {
			return false, false
		}
		d.count = d.r.uleb()
		if d.count > maxRun {
			d.r.fail(errColumn)
		}
		if d.r.err != nil {
			return false, false
		}
		d.last = !d.last
	}
	d.count--
	return d.last, true
}

// rleEncoder is a port of Rust's RleEncoder state machine. A column that
// holds only nulls encodes to nothing.
type rleEncoder[T comparable] struct {
	out   []byte
	write func([]byte, T) []byte
	state encState
	val   T   // the lone value, the repeated value, or a literal run's last value
	lits  []T // a literal run's earlier values
	n     uint64
}

type encState uint8

const (
	encEmpty encState = iota
	encInitialNulls
	encNulls
	encLone
	encRun
	encLiteral
)

func newRLEEncoder[T comparable](write func([]byte, T) []byte) *rleEncoder[T] {
	return &rleEncoder[T]{write: write}
}

// reset empties e for a new column, keeping its buffers.
func (e *rleEncoder[T]) reset() {
	var zero T
	e.out, e.lits, e.state, e.val, e.n = e.out[:0], e.lits[:0], encEmpty, zero, 0
}

func (e *rleEncoder[T]) flushRun(v T, n uint64) {
	e.out = appendSLEB(e.out, int64(n))
	e.out = e.write(e.out, v)
}

func (e *rleEncoder[T]) flushNulls(n uint64) {
	e.out = appendSLEB(e.out, 0)
	e.out = appendULEB(e.out, n)
}

func (e *rleEncoder[T]) flushLiterals(vs []T) {
	e.out = appendSLEB(e.out, -int64(len(vs)))
	for _, v := range vs {
		e.out = e.write(e.out, v)
	}
}

// flush writes out whatever the state holds (except nulls that open the
// column, which are only written once a value follows).
func (e *rleEncoder[T]) flush() {
	switch e.state {
	case encNulls:
		e.flushNulls(e.n)
	case encLone:
		// flushLiterals of the one value, without a slice to hold it.
		e.out = appendSLEB(e.out, -1)
		e.out = e.write(e.out, e.val)
	case encRun:
		e.flushRun(e.val, e.n)
	case encLiteral:
		e.flushLiterals(append(e.lits, e.val))
	}
	e.lits = e.lits[:0]
}

func (e *rleEncoder[T]) appendNull() {
	switch e.state {
	case encEmpty:
		e.state, e.n = encInitialNulls, 1
	case encInitialNulls, encNulls:
		e.n++
	default:
		e.flush()
		e.state, e.n = encNulls, 1
	}
}

func (e *rleEncoder[T]) appendValue(v T) {
	switch e.state {
	case encEmpty:
		e.state, e.val = encLone, v
	case encLone:
		if e.val == v {
			e.state, e.n = encRun, 2
		} else {
			e.lits = append(e.lits[:0], e.val)
			e.state, e.val = encLiteral, v
		}
	case encRun:
		if e.val == v {
			e.n++
		} else {
			e.flushRun(e.val, e.n)
			e.state, e.val = encLone, v
		}
	case encLiteral:
		if e.val == v {
			e.flushLiterals(e.lits)
			e.lits = e.lits[:0]
			e.state, e.n = encRun, 2
		} else {
			e.lits = append(e.lits, e.val)
			e.val = v
		}
	case encInitialNulls, encNulls:
		e.flushNulls(e.n)
		e.state, e.val = encLone, v
	}
}

func (e *rleEncoder[T]) finish() []byte {
	if e.state != encInitialNulls {
		e.flush()
	}
	e.state = encEmpty
	return e.out
}

func writeUint(b []byte, v uint64) []byte { return appendULEB(b, v) }
func writeInt(b []byte, v int64) []byte   { return appendSLEB(b, v) }
func writeStr(b []byte, s string) []byte {
	b = appendULEB(b, uint64(len(s)))
	return append(b, s...)
}

// deltaEncoder is a port of Rust's DeltaEncoder.
type deltaEncoder struct {
	rle rleEncoder[int64]
	abs int64
}

func newDeltaEncoder() *deltaEncoder { return &deltaEncoder{rle: rleEncoder[int64]{write: writeInt}} }

// reset empties e for a new column, keeping its buffers.
func (e *deltaEncoder) reset() {
	e.rle.reset()
	e.abs = 0
}

func (e *deltaEncoder) appendValue(v int64) {
	e.rle.appendValue(saturatingSub(v, e.abs))
	e.abs = v
}

func (e *deltaEncoder) appendNull() { e.rle.appendNull() }

func (e *deltaEncoder) finish() []byte { return e.rle.finish() }

// boolEncoder is a port of Rust's BooleanEncoder; with maybe set, a column
// of nothing but false encodes to nothing (Rust's MaybeBooleanEncoder).
type boolEncoder struct {
	out      []byte
	last     bool
	count    uint64
	maybe    bool
	allFalse bool
}

func newBoolEncoder(maybe bool) *boolEncoder { return &boolEncoder{maybe: maybe, allFalse: true} }

// reset empties e for a new column, keeping its buffer.
func (e *boolEncoder) reset() {
	*e = boolEncoder{out: e.out[:0], maybe: e.maybe, allFalse: true}
}

func (e *boolEncoder) append(v bool) {
	if v {
		e.allFalse = false
	}
	if v == e.last {
		e.count++
		return
	}
	e.out = appendULEB(e.out, e.count)
	e.last, e.count = v, 1
}

func (e *boolEncoder) finish() []byte {
	if e.maybe && e.allFalse {
		return nil
	}
	if e.count > 0 {
		e.out = appendULEB(e.out, e.count)
	}
	return e.out
}
