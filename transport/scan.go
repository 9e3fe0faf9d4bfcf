package transport

// Scan checks that b is exactly one well-formed msgpack value, nested at
// most maxDepth containers deep, without allocating anything that depends
// on the input. Every declared length must fit in the bytes that follow it:
// a str, bin or ext of n bytes needs n bytes, an array of n elements needs at
// least n bytes (one per element) and a map of n entries at least 2n.
//
// msgpack v5.4.1 allocates whatever a header declares before reading the
// elements (vmihailenco/msgpack#401: `dd ff ff ff ff` asks for 4 billion
// slice elements and kills the process), so frames from the network go
// through Scan before any decoding. After Scan, every allocation the decoder
// makes is bounded by the size of b.
//
// Errors are *Error with CodeBadFrame (truncated, invalid, trailing bytes)
// or CodeTooLarge (too deep).
func Scan(b []byte, maxDepth int) error {
	return scan(b, maxDepth, -1)
}

// scan is Scan with a bound on the total number of array elements and map
// entries (maxItems < 0: none), which bounds the Go memory a decode may use
// to a small multiple of the frame. The walk is iterative: its only memory
// is a stack of at most maxDepth+1 counters.
func scan(b []byte, maxDepth, maxItems int) error {
	if maxDepth < 0 {
		maxDepth = 0
	}
	// left[i] is how many values remain to be read in the i-th open
	// container; left[0] is the single top-level value.
	var stackBuf [DefaultMaxDepth + 1]uint64
	left := append(stackBuf[:0], 1)
	items := uint64(0)
	pos := 0
	for len(left) > 0 {
		top := len(left) - 1
		if left[top] == 0 {
			left = left[:top]
			continue
		}
		left[top]--

		at := pos
		t, next, err := readToken(b, pos)
		if err != nil {
			return err
		}
		pos = next
		rest := uint64(len(b) - pos)
		if t.ctr {
			// Each value takes at least one byte, so more values than bytes
			// left is a lie told to make the decoder allocate.
			if t.elems > rest {
				return errorf(CodeBadFrame, "msgpack container at offset %d declares %d values with %d bytes left", at, t.elems, rest)
			}
			if len(left) > maxDepth {
				return errorf(CodeTooLarge, "msgpack nested deeper than %d at offset %d", maxDepth, at)
			}
			if t.pairs {
				items += t.elems / 2
			} else {
				items += t.elems
			}
			if maxItems >= 0 && items > uint64(maxItems) {
				return errorf(CodeTooLarge, "msgpack holds more than %d items (offset %d)", maxItems, at)
			}
			if t.elems > 0 {
				left = append(left, t.elems)
			}
			continue
		}
		if t.skip > rest {
			return errorf(CodeBadFrame, "msgpack value at offset %d needs %d bytes, %d left", at, t.skip, rest)
		}
		pos += int(t.skip)
	}
	if pos != len(b) {
		return errorf(CodeBadFrame, "%d trailing bytes after msgpack value at offset %d", len(b)-pos, pos)
	}
	return nil
}

// token is the header of one msgpack value: what follows it.
type token struct {
	skip  uint64 // payload bytes that follow the header
	elems uint64 // values inside a container
	ctr   bool   // an array or a map
	pairs bool   // a map: elems counts its keys and values
}

// readToken reads the header of the value at b[at], returning it and the
// offset just past it. It checks only that the header itself is there.
func readToken(b []byte, at int) (token, int, error) {
	var t token
	if at >= len(b) {
		return t, at, errorf(CodeBadFrame, "msgpack truncated at offset %d", at)
	}
	c := b[at]
	pos := at + 1
	switch {
	case c <= 0x7f, c >= 0xe0: // positive and negative fixint
		return t, pos, nil
	case c <= 0x8f: // fixmap
		t.elems, t.ctr, t.pairs = 2*uint64(c&0x0f), true, true
		return t, pos, nil
	case c <= 0x9f: // fixarray
		t.elems, t.ctr = uint64(c&0x0f), true
		return t, pos, nil
	case c <= 0xbf: // fixstr
		t.skip = uint64(c & 0x1f)
		return t, pos, nil
	}
	var hdr int // bytes of length (and ext type) after the code
	switch c {
	case 0xc0, 0xc2, 0xc3: // nil, false, true
	case 0xc1:
		return t, pos, errorf(CodeBadFrame, "msgpack: invalid code 0xc1 at offset %d", at)
	case 0xc4, 0xd9: // bin8, str8
		hdr = 1
	case 0xc5, 0xda: // bin16, str16
		hdr = 2
	case 0xc6, 0xdb: // bin32, str32
		hdr = 4
	case 0xc7, 0xc8, 0xc9: // ext8, ext16, ext32: length, then a type byte
		hdr = 1 << (c - 0xc7)
	case 0xca, 0xce, 0xd2: // float32, uint32, int32
		t.skip = 4
	case 0xcb, 0xcf, 0xd3: // float64, uint64, int64
		t.skip = 8
	case 0xcc, 0xd0: // uint8, int8
		t.skip = 1
	case 0xcd, 0xd1: // uint16, int16
		t.skip = 2
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16: type byte + data
		t.skip = 1 + 1<<(c-0xd4)
	case 0xdc, 0xde: // array16, map16
		hdr = 2
	case 0xdd, 0xdf: // array32, map32
		hdr = 4
	}
	if hdr == 0 {
		return t, pos, nil
	}
	if len(b)-pos < hdr {
		return t, pos, errorf(CodeBadFrame, "msgpack header truncated at offset %d", at)
	}
	var n uint64
	for _, x := range b[pos : pos+hdr] {
		n = n<<8 | uint64(x)
	}
	pos += hdr
	switch c {
	case 0xc7, 0xc8, 0xc9:
		t.skip = 1 + n // the type byte, then n bytes
	case 0xdc, 0xdd:
		t.elems, t.ctr = n, true
	case 0xde, 0xdf:
		t.elems, t.ctr, t.pairs = 2*n, true, true
	default:
		t.skip = n
	}
	return t, pos, nil
}
