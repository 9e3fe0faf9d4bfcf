package transport

import (
	"encoding/binary"
	"math"
)

// The envelope and the bodies that carry changes (push, ack, changes and
// live: one of each per change a device pushes or receives) are encoded
// and decoded here by hand rather than by msgpack's reflection, which cost
// more than the rest of a subscriber's receive path. The wire format is
// msgpack's, byte for byte: the encoder writes what msgpack.Marshal with
// compact integers writes for the same struct, and the decoder accepts the
// shapes that encoder produces, with the same result as msgpack.Unmarshal
// after checkInts. Anything else (an unknown or repeated key, a struct
// sent as an array, an integer out of its field's range, a nil body) makes
// the decoder give up, and the reflection decoder takes the frame from the
// start, so every input decodes, or fails, exactly as before.

// fastUnmarshal decodes b into v if v is one of the hand-decoded types and
// b has a shape the hand decoder takes. It reports false, leaving v as it
// was, otherwise.
func fastUnmarshal(b []byte, v any) bool {
	return fastUnmarshalWithin(b, v, -1)
}

// fastDepth is how deep the hand-decoded bodies nest: body, records,
// record, heads.
const fastDepth = 4

// fastUnmarshalWithin is fastUnmarshal giving up past maxItems array
// elements and map entries in all (maxItems < 0: no bound), as scan counts
// them. Its bodies nest fastDepth deep at most, and every length it reads
// is checked against the bytes left, so what it allocates is bounded as
// it is after scan: a body it takes needs no scan first.
func fastUnmarshalWithin(b []byte, v any, maxItems int) bool {
	r := mpReader{b: b, items: int64(maxItems), bounded: maxItems >= 0}
	var ok bool
	switch v := v.(type) {
	case *Envelope:
		ok = r.envelopeInto(v)
	case *Changes:
		ok = r.changesInto(v)
	case *Live:
		ok = r.changesInto((*Changes)(v))
	case *Push:
		ok = r.pushInto(v)
	case *Ack:
		ok = r.ackInto(v)
	}
	return ok
}

// mpReader reads msgpack values from b. Each method reports false for
// anything it does not take, which sends the frame to msgpack.
type mpReader struct {
	b   []byte
	pos int
	// alias lets the envelope's body share b instead of copying it, when
	// the caller owns b and will not reuse it.
	alias bool
	// items is what is left of the bound on array elements and map
	// entries, if bounded.
	items   int64
	bounded bool
}

// count takes n items of the bound, reporting false past it.
func (r *mpReader) count(n uint64) bool {
	if !r.bounded {
		return true
	}
	if n > uint64(r.items) {
		r.items = -1
		return false
	}
	r.items -= int64(n)
	return true
}

func (r *mpReader) code() (byte, bool) {
	if r.pos >= len(r.b) {
		return 0, false
	}
	c := r.b[r.pos]
	r.pos++
	return c, true
}

func (r *mpReader) take(n uint64) ([]byte, bool) {
	if n > uint64(len(r.b)-r.pos) {
		return nil, false
	}
	s := r.b[r.pos : r.pos+int(n)]
	r.pos += int(n)
	return s, true
}

// be reads a big-endian unsigned integer of n bytes.
func (r *mpReader) be(n uint64) (uint64, bool) {
	s, ok := r.take(n)
	if !ok {
		return 0, false
	}
	var v uint64
	for _, x := range s {
		v = v<<8 | uint64(x)
	}
	return v, true
}

// mapLen reads a map header; nil is not taken (msgpack zeroes the struct).
func (r *mpReader) mapLen() (uint64, bool) {
	c, ok := r.code()
	switch {
	case !ok:
		return 0, false
	case c&0xf0 == 0x80:
		n := uint64(c & 0x0f)
		return n, r.count(n)
	case c == 0xde, c == 0xdf:
		n, ok := r.be(2 << (c - 0xde))
		// Each entry needs two bytes at least.
		return n, ok && n <= uint64(len(r.b)-r.pos)/2 && r.count(n)
	}
	return 0, false
}

// arrayLen reads an array header, or nil (isNil). A length larger than the
// bytes left is not taken: each element needs one at least.
func (r *mpReader) arrayLen() (n uint64, isNil, ok bool) {
	c, ok := r.code()
	switch {
	case !ok:
		return 0, false, false
	case c == 0xc0:
		return 0, true, true
	case c&0xf0 == 0x90:
		n = uint64(c & 0x0f)
	case c == 0xdc:
		n, ok = r.be(2)
	case c == 0xdd:
		n, ok = r.be(4)
	default:
		return 0, false, false
	}
	if !ok || n > uint64(len(r.b)-r.pos) || !r.count(n) {
		return 0, false, false
	}
	return n, false, true
}

// strBin reads a str or a bin, which msgpack decodes alike into a string or
// a []byte, or nil (isNil). s shares r's bytes.
func (r *mpReader) strBin() (s []byte, isNil, ok bool) {
	c, ok := r.code()
	if !ok {
		return nil, false, false
	}
	var n uint64
	switch {
	case c == 0xc0:
		return nil, true, true
	case c&0xe0 == 0xa0:
		n = uint64(c & 0x1f)
	case c == 0xd9, c == 0xc4:
		n, ok = r.be(1)
	case c == 0xda, c == 0xc5:
		n, ok = r.be(2)
	case c == 0xdb, c == 0xc6:
		n, ok = r.be(4)
	default:
		return nil, false, false
	}
	if !ok {
		return nil, false, false
	}
	s, ok = r.take(n)
	return s, false, ok
}

func (r *mpReader) str() (string, bool) {
	s, _, ok := r.strBin()
	return string(s), ok
}

// bytes reads a []byte as msgpack does: nil for nil, a new slice otherwise
// (empty, not nil, for a zero length).
func (r *mpReader) bytes() ([]byte, bool) {
	s, isNil, ok := r.strBin()
	if !ok || isNil {
		return nil, ok
	}
	return append(make([]byte, 0, len(s)), s...), true
}

// uint reads an unsigned integer of at most max; nil is 0. A negative one,
// or one past max, is not taken: checkInts refuses it.
func (r *mpReader) uint(max uint64) (uint64, bool) {
	c, ok := r.code()
	var v uint64
	switch {
	case !ok:
		return 0, false
	case c == 0xc0:
		return 0, true
	case c <= 0x7f:
		v = uint64(c)
	case c >= 0xcc && c <= 0xcf: // uint8 to uint64
		v, ok = r.be(1 << (c - 0xcc))
	case c >= 0xd0 && c <= 0xd3: // int8 to int64
		n := uint64(1) << (c - 0xd0)
		v, ok = r.be(n)
		if ok && v>>(8*n-1) != 0 {
			return 0, false // negative
		}
	default:
		return 0, false
	}
	return v, ok && v <= max
}

func (r *mpReader) bool() (bool, bool) {
	c, ok := r.code()
	switch {
	case !ok:
		return false, false
	case c == 0xc0, c == 0xc2:
		return false, true
	case c == 0xc3:
		return true, true
	}
	return false, false
}

// value skips one value and returns its bytes.
func (r *mpReader) value() ([]byte, bool) {
	start := r.pos
	for left := uint64(1); left > 0; left-- {
		t, next, err := readToken(r.b, r.pos)
		if err != nil {
			return nil, false
		}
		if t.ctr {
			left += t.elems
		} else if t.skip > uint64(len(r.b)-next) {
			return nil, false
		} else {
			next += int(t.skip)
		}
		r.pos = next
	}
	return r.b[start:r.pos], true
}

func once(seen *uint8, bit uint8) bool {
	if *seen&bit != 0 {
		return false
	}
	*seen |= bit
	return true
}

// envelopeInto decodes an envelope into e, leaving e as it was if it
// gives up.
func (r *mpReader) envelopeInto(e *Envelope) bool {
	v := *e
	if ok := r.envelope(&v) && r.pos == len(r.b); !ok {
		return false
	}
	*e = v
	return true
}

func (r *mpReader) envelope(e *Envelope) bool {
	n, ok := r.mapLen()
	var seen uint8
	for i := uint64(0); ok && i < n; i++ {
		s, _, kok := r.strBin()
		if !kok {
			return false
		}
		switch string(s) {
		case "v":
			var v uint64
			v, ok = r.uint(math.MaxUint16)
			e.V = uint16(v)
			ok = ok && once(&seen, 1)
		case "type":
			var t string
			t, ok = r.str()
			e.Type = MessageType(t)
			ok = ok && once(&seen, 2)
		case "id":
			e.ID, ok = r.uint(math.MaxUint64)
			ok = ok && once(&seen, 4)
		case "body":
			var body []byte
			if body, ok = r.value(); ok && (len(body) == 0 || body[0] == 0xc0) {
				ok = false // nil: msgpack leaves no body
			}
			if ok && !r.alias {
				body = append(make([]byte, 0, len(body)), body...)
			}
			e.Body = body
			ok = ok && once(&seen, 8)
		default:
			return false
		}
	}
	return ok
}

func (r *mpReader) records() ([]RecordChanges, bool) {
	n, isNil, ok := r.arrayLen()
	if !ok || isNil {
		return nil, ok
	}
	out := make([]RecordChanges, n)
	for i := range out {
		if !r.recordChanges(&out[i]) {
			return nil, false
		}
	}
	return out, true
}

func (r *mpReader) recordChanges(rc *RecordChanges) bool {
	n, ok := r.mapLen()
	var seen uint8
	for i := uint64(0); ok && i < n; i++ {
		s, _, kok := r.strBin()
		if !kok {
			return false
		}
		switch string(s) {
		case "record":
			rc.Record, ok = r.str()
			ok = ok && once(&seen, 1)
		case "seq":
			rc.Seq, ok = r.uint(math.MaxUint64)
			ok = ok && once(&seen, 2)
		case "snapshot":
			rc.Snapshot, ok = r.bool()
			ok = ok && once(&seen, 4)
		case "data":
			rc.Data, ok = r.bytes()
			ok = ok && once(&seen, 8)
		case "heads":
			rc.Heads, ok = r.heads()
			ok = ok && once(&seen, 16)
		default:
			return false
		}
	}
	return ok
}

// heads reads a [][]byte. The heads share one allocation: the decoder owns
// them, as it would own msgpack's separate copies.
func (r *mpReader) heads() ([][]byte, bool) {
	n, isNil, ok := r.arrayLen()
	if !ok || isNil {
		return nil, ok
	}
	out := make([][]byte, n)
	var buf []byte
	for i := range out {
		s, isNil, ok := r.strBin()
		switch {
		case !ok:
			return nil, false
		case isNil:
			continue
		case len(s) == 0:
			out[i] = make([]byte, 0)
			continue
		}
		if len(buf) < len(s) {
			// Room for the heads left if they are all this size, but no
			// more than the bytes left could hold.
			rest := uint64(len(s)) * (n - uint64(i))
			buf = make([]byte, max(len(s), int(min(rest, uint64(len(s)+len(r.b)-r.pos)))))
		}
		out[i] = buf[:len(s):len(s)]
		copy(out[i], s)
		buf = buf[len(s):]
	}
	return out, true
}

// changesInto decodes a Changes (or Live) body into c, which must hold no
// records yet.
func (r *mpReader) changesInto(c *Changes) bool {
	if c.Records != nil {
		return false
	}
	v := *c
	n, ok := r.mapLen()
	var seen uint8
	for i := uint64(0); ok && i < n; i++ {
		s, _, kok := r.strBin()
		if !kok {
			return false
		}
		switch string(s) {
		case "collection":
			v.Collection, ok = r.str()
			ok = ok && once(&seen, 1)
		case "records":
			v.Records, ok = r.records()
			ok = ok && once(&seen, 2)
		case "next":
			v.Next, ok = r.uint(math.MaxUint64)
			ok = ok && once(&seen, 4)
		case "more":
			v.More, ok = r.bool()
			ok = ok && once(&seen, 8)
		case "after":
			v.After, ok = r.str()
			ok = ok && once(&seen, 16)
		case "early":
			v.Early, ok = r.bool()
			ok = ok && once(&seen, 32)
		default:
			return false
		}
	}
	if ok = ok && r.pos == len(r.b); ok {
		*c = v
	}
	return ok
}

func (r *mpReader) pushInto(p *Push) bool {
	if p.Records != nil {
		return false
	}
	v := *p
	n, ok := r.mapLen()
	var seen uint8
	for i := uint64(0); ok && i < n; i++ {
		s, _, kok := r.strBin()
		if !kok {
			return false
		}
		switch string(s) {
		case "collection":
			v.Collection, ok = r.str()
			ok = ok && once(&seen, 1)
		case "fence":
			v.Fence, ok = r.uint(math.MaxUint64)
			ok = ok && once(&seen, 2)
		case "records":
			v.Records, ok = r.records()
			ok = ok && once(&seen, 4)
		default:
			return false
		}
	}
	if ok = ok && r.pos == len(r.b); ok {
		*p = v
	}
	return ok
}

func (r *mpReader) ackInto(a *Ack) bool {
	if a.Records != nil {
		return false
	}
	v := *a
	n, ok := r.mapLen()
	var seen uint8
	for i := uint64(0); ok && i < n; i++ {
		s, _, kok := r.strBin()
		if !kok {
			return false
		}
		switch string(s) {
		case "collection":
			v.Collection, ok = r.str()
			ok = ok && once(&seen, 1)
		case "seq":
			v.Seq, ok = r.uint(math.MaxUint64)
			ok = ok && once(&seen, 2)
		case "from":
			v.From, ok = r.uint(math.MaxUint64)
			ok = ok && once(&seen, 8)
		case "records":
			v.Records, ok = r.recordAcks()
			ok = ok && once(&seen, 4)
		default:
			return false
		}
	}
	if ok = ok && r.pos == len(r.b); ok {
		*a = v
	}
	return ok
}

func (r *mpReader) recordAcks() ([]RecordAck, bool) {
	n, isNil, ok := r.arrayLen()
	if !ok || isNil {
		return nil, ok
	}
	out := make([]RecordAck, n)
	for i := range out {
		m, ok := r.mapLen()
		var seen uint8
		for j := uint64(0); ok && j < m; j++ {
			s, _, kok := r.strBin()
			if !kok {
				return nil, false
			}
			switch string(s) {
			case "record":
				out[i].Record, ok = r.str()
				ok = ok && once(&seen, 1)
			case "heads":
				out[i].Heads, ok = r.heads()
				ok = ok && once(&seen, 2)
			default:
				return nil, false
			}
		}
		if !ok {
			return nil, false
		}
	}
	return out, true
}

// fastMarshal appends the msgpack encoding of v to dst, as msgpack with
// compact integers encodes it, if v is one of the hand-encoded types.
func fastMarshal(dst []byte, v any) ([]byte, bool) {
	switch v := v.(type) {
	case *Changes:
		return appendChanges(dst, v), true
	case *Live:
		return appendChanges(dst, (*Changes)(v)), true
	case *Push:
		return appendPush(dst, v), true
	case *Ack:
		return appendAck(dst, v), true
	case *Envelope:
		return appendEnvelope(dst, v), true
	}
	return dst, false
}

// fastSize is roughly what v takes encoded, to size the buffer once.
func fastSize(v any) int {
	recs := func(rs []RecordChanges) int {
		n := 0
		for i := range rs {
			n += 48 + len(rs[i].Record) + len(rs[i].Data) + len(rs[i].Heads)*(HeadSize+2)
		}
		return n
	}
	switch v := v.(type) {
	case *Changes:
		return 64 + len(v.Collection) + len(v.After) + recs(v.Records)
	case *Live:
		return 64 + len(v.Collection) + len(v.After) + recs(v.Records)
	case *Push:
		return 64 + len(v.Collection) + recs(v.Records)
	case *Ack:
		n := 64 + len(v.Collection)
		for i := range v.Records {
			n += 16 + len(v.Records[i].Record) + len(v.Records[i].Heads)*(HeadSize+2)
		}
		return n
	case *Envelope:
		return 32 + len(v.Type) + len(v.Body)
	}
	return 256
}

func appendMapLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x80|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xde), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdf), uint32(n))
}

func appendArrayLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xdc), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdd), uint32(n))
}

func appendStr(b []byte, s string) []byte {
	n := len(s)
	switch {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n < 256:
		b = append(b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}

func appendBin(b []byte, s []byte) []byte {
	if s == nil {
		return append(b, 0xc0)
	}
	n := len(s)
	switch {
	case n < 256:
		b = append(b, 0xc4, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xc5), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xc6), uint32(n))
	}
	return append(b, s...)
}

func appendUint(b []byte, n uint64) []byte {
	switch {
	case n <= math.MaxInt8:
		return append(b, byte(n))
	case n <= math.MaxUint8:
		return append(b, 0xcc, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(n))
	case n <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), n)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 0xc3)
	}
	return append(b, 0xc2)
}

func appendHeads(b []byte, hs [][]byte) []byte {
	if hs == nil {
		return append(b, 0xc0)
	}
	b = appendArrayLen(b, len(hs))
	for _, h := range hs {
		b = appendBin(b, h)
	}
	return b
}

func appendRecords(b []byte, rs []RecordChanges) []byte {
	if rs == nil {
		return append(b, 0xc0)
	}
	b = appendArrayLen(b, len(rs))
	for i := range rs {
		rc := &rs[i]
		b = append(b, 0x85)
		b = appendStr(b, "record")
		b = appendStr(b, rc.Record)
		b = appendStr(b, "seq")
		b = appendUint(b, rc.Seq)
		b = appendStr(b, "snapshot")
		b = appendBool(b, rc.Snapshot)
		b = appendStr(b, "data")
		b = appendBin(b, rc.Data)
		b = appendStr(b, "heads")
		b = appendHeads(b, rc.Heads)
	}
	return b
}

func appendChanges(b []byte, c *Changes) []byte {
	n := 4
	if c.After != "" {
		n++
	}
	if c.Early {
		n++
	}
	b = appendMapLen(b, n)
	b = appendStr(b, "collection")
	b = appendStr(b, c.Collection)
	b = appendStr(b, "records")
	b = appendRecords(b, c.Records)
	b = appendStr(b, "next")
	b = appendUint(b, c.Next)
	b = appendStr(b, "more")
	b = appendBool(b, c.More)
	if c.After != "" {
		b = appendStr(b, "after")
		b = appendStr(b, c.After)
	}
	if c.Early {
		b = appendStr(b, "early")
		b = appendBool(b, true)
	}
	return b
}

func appendPush(b []byte, p *Push) []byte {
	b = append(b, 0x83)
	b = appendStr(b, "collection")
	b = appendStr(b, p.Collection)
	b = appendStr(b, "fence")
	b = appendUint(b, p.Fence)
	b = appendStr(b, "records")
	return appendRecords(b, p.Records)
}

func appendAck(b []byte, a *Ack) []byte {
	if a.From != 0 {
		b = append(b, 0x84)
	} else {
		b = append(b, 0x83)
	}
	b = appendStr(b, "collection")
	b = appendStr(b, a.Collection)
	b = appendStr(b, "seq")
	b = appendUint(b, a.Seq)
	if a.From != 0 {
		b = appendStr(b, "from")
		b = appendUint(b, a.From)
	}
	b = appendStr(b, "records")
	if a.Records == nil {
		return append(b, 0xc0)
	}
	b = appendArrayLen(b, len(a.Records))
	for i := range a.Records {
		b = append(b, 0x82)
		b = appendStr(b, "record")
		b = appendStr(b, a.Records[i].Record)
		b = appendStr(b, "heads")
		b = appendHeads(b, a.Records[i].Heads)
	}
	return b
}

// appendEnvelope appends e with its body as it is (msgpack.RawMessage
// writes its bytes, nothing for none).
func appendEnvelope(b []byte, e *Envelope) []byte {
	b = append(b, 0x84)
	b = appendStr(b, "v")
	b = appendUint(b, uint64(e.V))
	b = appendStr(b, "type")
	b = appendStr(b, string(e.Type))
	b = appendStr(b, "id")
	b = appendUint(b, e.ID)
	b = appendStr(b, "body")
	if e.Body == nil {
		return append(b, 0xc0)
	}
	return append(b, e.Body...)
}
