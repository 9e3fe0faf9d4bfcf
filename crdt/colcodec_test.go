package crdt

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"
)

func TestSLEBRoundTrip(t *testing.T) {
	vals := []int64{0, 1, -1, 63, 64, -64, -65, 127, 128, -128, 1 << 62, -1 << 62, math.MaxInt64, math.MinInt64}
	rng := rand.New(rand.NewPCG(7, 7))
	for range 2000 {
		vals = append(vals, rng.Int64()>>rng.IntN(64))
	}
	for _, v := range vals {
		b := appendSLEB(nil, v)
		got, n := readSLEB64(b)
		if got != v || n != len(b) {
			t.Fatalf("%d: encoded %x, read back %d (%d bytes)", v, b, got, n)
		}
		// Minimal: one byte shorter cannot hold it.
		if len(b) > 1 {
			if lo, hi := int64(-1)<<(7*(len(b)-1)-1), int64(1)<<(7*(len(b)-1)-1); v >= lo && v < hi {
				t.Fatalf("%d: %d bytes, fits in fewer", v, len(b))
			}
		}
	}
	for _, bad := range [][]byte{{0x80}, {}, bytes.Repeat([]byte{0xff}, 10), append(bytes.Repeat([]byte{0x80}, 9), 0x01)} {
		if _, n := readSLEB64(bad); n != 0 {
			t.Fatalf("readSLEB64(%x) accepted", bad)
		}
	}
}

// Every sequence of values and nulls survives the RLE encoder and decoder,
// and re-encoding what was decoded gives the same bytes.
func TestRLERoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 3000 {
		n := rng.IntN(20)
		var vals []*uint64
		for range n {
			if rng.IntN(4) == 0 {
				vals = append(vals, nil)
				continue
			}
			v := uint64(rng.IntN(3))
			vals = append(vals, &v)
		}
		e := newRLEEncoder(writeUint)
		for _, v := range vals {
			if v == nil {
				e.appendNull()
			} else {
				e.appendValue(*v)
			}
		}
		enc := e.finish()
		d := newRLE[uint64](enc)
		var got []*uint64
		for {
			v, null, ok := d.next()
			if d.err() != nil {
				t.Fatalf("%v: decode: %v", vals, d.err())
			}
			if !ok {
				break
			}
			if null {
				got = append(got, nil)
			} else {
				got = append(got, &v)
			}
		}
		// A column of nothing but nulls encodes to nothing.
		allNull := true
		for _, v := range vals {
			allNull = allNull && v == nil
		}
		if allNull {
			if len(enc) != 0 {
				t.Fatalf("all nulls encoded to %x", enc)
			}
			continue
		}
		if len(got) != len(vals) {
			t.Fatalf("%v: decoded %d values from %x", vals, len(got), enc)
		}
		for i := range vals {
			if (vals[i] == nil) != (got[i] == nil) || vals[i] != nil && *vals[i] != *got[i] {
				t.Fatalf("%v: value %d differs after %x", vals, i, enc)
			}
		}
	}
}

func TestBoolAndDeltaRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		n := rng.IntN(30)
		bs := make([]bool, n)
		ds := make([]int64, n)
		be, de := newBoolEncoder(false), newDeltaEncoder()
		for i := range n {
			bs[i] = rng.IntN(3) == 0
			ds[i] = rng.Int64N(50)
			be.append(bs[i])
			de.appendValue(ds[i])
		}
		bd, dd := newBool(be.finish()), newDelta(de.finish())
		for i := range n {
			b, ok := bd.next()
			d, null, dok := dd.next()
			if !ok || b != bs[i] || !dok || null || d != ds[i] {
				t.Fatalf("value %d: bool %v,%v want %v; delta %d,%v want %d", i, b, ok, bs[i], d, dok, ds[i])
			}
		}
		if _, ok := bd.next(); ok {
			t.Fatal("boolean column longer than written")
		}
	}
}
