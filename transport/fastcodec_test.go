package transport

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// reflectMarshal is the encoder of earlier releases: msgpack's reflection
// with compact integers. Their peers send, and expect, what it writes.
func reflectMarshal(t testing.TB, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// hotValues are values of every hand-coded type, with the lengths and
// integers at each boundary of msgpack's encodings, nil and empty slices.
func hotValues(rng *rand.Rand, n int) []any {
	strs := []int{0, 1, 31, 32, 255, 256, 65535, 65536}
	ints := []uint64{0, 1, 127, 128, 255, 256, 65535, 65536, math.MaxUint32, math.MaxUint32 + 1, math.MaxUint64}
	str := func() string {
		return strings.Repeat("x", strs[rng.IntN(len(strs))])
	}
	bin := func() []byte {
		switch rng.IntN(4) {
		case 0:
			return nil
		case 1:
			return []byte{}
		}
		b := make([]byte, strs[rng.IntN(len(strs))])
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}
	heads := func() [][]byte {
		switch k := rng.IntN(5); k {
		case 0:
			return nil
		case 1:
			return [][]byte{}
		default:
			hs := make([][]byte, k+rng.IntN(20))
			for i := range hs {
				if rng.IntN(10) == 0 {
					hs[i] = bin()
				} else {
					hs[i] = head(byte(i))
				}
			}
			return hs
		}
	}
	recs := func() []RecordChanges {
		switch k := rng.IntN(4); k {
		case 0:
			return nil
		case 1:
			return []RecordChanges{}
		}
		rs := make([]RecordChanges, 1+rng.IntN(20))
		for i := range rs {
			rs[i] = RecordChanges{Record: str(), Seq: ints[rng.IntN(len(ints))], Snapshot: rng.IntN(2) == 0, Data: bin(), Heads: heads()}
		}
		return rs
	}
	var out []any
	for range n {
		c := Changes{Collection: str(), Records: recs(), Next: ints[rng.IntN(len(ints))], More: rng.IntN(2) == 0, Early: rng.IntN(2) == 0}
		if rng.IntN(2) == 0 {
			c.After = str()
		}
		lv := Live(c)
		acks := []RecordAck(nil)
		if rng.IntN(4) > 0 {
			acks = make([]RecordAck, rng.IntN(20))
			for i := range acks {
				acks[i] = RecordAck{Record: str(), Heads: heads()}
			}
		}
		body := mustMarshal(map[string]any{"k": bin()}) // a body is one msgpack value
		out = append(out,
			&c, &lv,
			&Push{Collection: str(), Fence: ints[rng.IntN(len(ints))], Records: recs()},
			&Ack{Collection: str(), Seq: ints[rng.IntN(len(ints))], Records: acks},
			&Ack{Collection: str(), Seq: math.MaxUint64, From: ints[rng.IntN(len(ints))], Records: acks},
			&Envelope{V: uint16(ints[rng.IntN(7)]), Type: MessageType(str()), ID: ints[rng.IntN(len(ints))], Body: body},
		)
	}
	return out
}

// TestFastCodecMatchesMsgpack checks the hand-written codec against
// msgpack's reflection, which earlier releases used: the same bytes out,
// and each side decodes the other's frames to the same value.
func TestFastCodecMatchesMsgpack(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, v := range hotValues(rng, 60) {
		want := reflectMarshal(t, v)
		got, ok := fastMarshal(nil, v)
		if !ok {
			t.Fatalf("%T: not hand-encoded", v)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%T: hand encoding differs from msgpack's\n got %x\nwant %x", v, got[:min(len(got), 200)], want[:min(len(want), 200)])
		}
		slow := reflect.New(reflect.TypeOf(v).Elem()).Interface()
		if err := slowUnmarshal(want, slow); err != nil {
			t.Fatalf("%T: msgpack decode: %v", v, err)
		}
		fast := reflect.New(reflect.TypeOf(v).Elem()).Interface()
		if !fastUnmarshal(want, fast) {
			t.Fatalf("%T: the hand decoder gave up on msgpack's own encoding", v)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%T: decoded differently\nhand    %#v\nmsgpack %#v", v, fast, slow)
		}
	}
}

// TestDecodePushFromEarlierRelease decodes a push frame as the previous
// release's client wrote it (msgpack reflection, captured as bytes).
func TestDecodePushFromEarlierRelease(t *testing.T) {
	const frame = "84a17601a474797065a470757368a2696401a4626f647983aa636f6c6c656374696f6ea5746f646f73a566656e636507a77265636f7264739185a67265636f7264a27231a3736571" +
		"00a8736e617073686f74c2a464617461c403636867a5686561647391c420" + "0404040404040404040404040404040404040404040404040404040404040404"
	b, err := hex.DecodeString(frame)
	if err != nil {
		t.Fatal(err)
	}
	e, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	p, err := DecodeBody[Push](e)
	if err != nil {
		t.Fatal(err)
	}
	want := &Push{Collection: "todos", Fence: 7, Records: []RecordChanges{{Record: "r1", Data: []byte("chg"), Heads: [][]byte{head(4)}}}}
	if e.V != 1 || e.Type != TypePush || e.ID != 1 || !reflect.DeepEqual(p, want) {
		t.Fatalf("decoded v%d %s id %d %#v, want %#v", e.V, e.Type, e.ID, p, want)
	}
	// And this release writes it byte for byte.
	if got := mustFrame(1, want); !bytes.Equal(got, b) {
		t.Fatalf("encoded\n%x\nwant\n%x", got, b)
	}
}

// TestFastDecodeGivesUp feeds shapes the hand decoder leaves to msgpack:
// the result must be msgpack's, value or error.
func TestFastDecodeGivesUp(t *testing.T) {
	rec := map[string]any{"record": "r1", "data": []byte("x"), "heads": [][]byte{head(1)}}
	cases := map[string][]byte{
		"unknown key":        mustMarshal(map[string]any{"collection": "c", "records": []any{rec}, "extra": 1}),
		"repeated key":       slices.Concat([]byte{0x83}, mustMarshal("collection"), mustMarshal("c"), mustMarshal("collection"), mustMarshal("d"), mustMarshal("records"), []byte{0x90}),
		"record as array":    mustMarshal(map[string]any{"collection": "c", "records": []any{[]any{"r1", 1, false, []byte("x"), nil}}}),
		"negative seq":       mustMarshal(map[string]any{"collection": "c", "records": []any{map[string]any{"record": "r", "seq": -1}}}),
		"next past uint64":   mustMarshal(map[string]any{"collection": "c", "next": -5}),
		"nil record":         mustMarshal(map[string]any{"collection": "c", "records": []any{nil}}),
		"float next":         mustMarshal(map[string]any{"collection": "c", "next": 1.5}),
		"string more":        mustMarshal(map[string]any{"collection": "c", "more": "yes"}),
		"nil body":           mustMarshal(nil),
		"truncated":          mustMarshal(map[string]any{"collection": "c"})[:5],
		"array body":         mustMarshal([]any{"c"}),
		"bin keys":           {0x81, 0xc4, 0x04, 'n', 'e', 'x', 't', 0x05},
		"int8 positive next": {0x81, 0xa4, 'n', 'e', 'x', 't', 0xd0, 0x05},
	}
	for name, b := range cases {
		for _, mk := range []func() any{func() any { return new(Changes) }, func() any { return new(Live) }, func() any { return new(Push) }, func() any { return new(Ack) }} {
			slow, got := mk(), mk()
			serr := slowUnmarshal(b, slow)
			gerr := unmarshal(b, got)
			if (serr == nil) != (gerr == nil) {
				t.Errorf("%s into %T: unmarshal err %v, msgpack's %v", name, got, gerr, serr)
				continue
			}
			if serr == nil && !reflect.DeepEqual(got, slow) {
				t.Errorf("%s into %T: unmarshal %#v, msgpack %#v", name, got, got, slow)
			}
		}
	}
}

// TestDecodeCopiesTheFrame: a frame decoded by Decode leaves the caller's
// buffer free to reuse.
func TestDecodeCopiesTheFrame(t *testing.T) {
	want := &Push{Collection: "todos", Records: []RecordChanges{{Record: "r1", Data: []byte("chg"), Heads: [][]byte{head(4)}}}}
	b := mustFrame(3, want)
	e, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0xc1
	}
	p, err := DecodeBody[Push](e)
	if err != nil || !reflect.DeepEqual(p, want) {
		t.Fatalf("after the frame was overwritten: %#v, %v", p, err)
	}
}

// FuzzFastDecode checks the hand decoder against msgpack on any input:
// whatever it takes, msgpack takes too, to the same value.
func FuzzFastDecode(f *testing.F) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, v := range hotValues(rng, 4) {
		if b, ok := fastMarshal(nil, v); ok && len(b) < 4096 {
			f.Add(b)
		}
	}
	for _, b := range sampleBodies() {
		f.Add(mustFrame(1, b))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, mk := range []func() any{
			func() any { return new(Changes) }, func() any { return new(Live) }, func() any { return new(Push) },
			func() any { return new(Ack) }, func() any { return new(Envelope) },
		} {
			fast := mk()
			if !fastUnmarshal(b, fast) {
				continue
			}
			slow := mk()
			if err := slowUnmarshal(b, slow); err != nil {
				t.Fatalf("%T: the hand decoder took %x, msgpack refuses it: %v", fast, b, err)
			}
			if !reflect.DeepEqual(fast, slow) {
				t.Fatalf("%T from %x:\nhand    %#v\nmsgpack %#v", fast, b, fast, slow)
			}
		}
	})
}

func BenchmarkDecodeLive(b *testing.B) {
	lv := &Live{Collection: "w4-abcdef", Next: 12345, Records: []RecordChanges{{Record: "r00001234", Seq: 12345, Data: bytes.Repeat([]byte{7}, 184), Heads: [][]byte{head(1)}}}}
	frame := mustFrame(0, lv)
	for _, mode := range []string{"hand", "msgpack"} {
		b.Run(mode, func(b *testing.B) {
			for b.Loop() {
				e, err := Decode(frame)
				if err != nil {
					b.Fatal(err)
				}
				var got Live
				if mode == "hand" {
					err = e.decodeInto(&got)
				} else {
					err = slowUnmarshal(e.Body, &got)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestBodyLimitsHoldWithoutScan: a body the hand decoder takes without a
// scan is still held to max_items and max_depth, as a scanned one is.
func TestBodyLimitsHoldWithoutScan(t *testing.T) {
	recs := make([]RecordChanges, 6)
	for i := range recs {
		recs[i] = RecordChanges{Record: "r", Data: []byte("x"), Heads: [][]byte{head(byte(i))}}
	}
	frame := mustFrame(1, &Push{Collection: "c", Records: recs})
	// The body holds 3 + 6 + 6*(5+1) = 45 items: a map of 3 entries, 6
	// records, each a map of 5 entries and one head.
	for _, tc := range []struct {
		limits Limits
		code   Code
	}{
		{Limits{MaxItems: 45}, ""},
		{Limits{MaxItems: 44}, CodeTooLarge},
		{Limits{MaxDepth: 4}, ""},
		{Limits{MaxDepth: 3}, CodeTooLarge},
	} {
		l := tc.limits.WithDefaults()
		e := &Envelope{V: ProtocolVersion, Type: TypePush, ID: 1, limits: &l}
		d, err := Decode(frame)
		if err != nil {
			t.Fatal(err)
		}
		e.Body = d.Body
		_, err = e.Message()
		var pe *Error
		switch {
		case tc.code == "" && err != nil:
			t.Errorf("%+v: %v", tc.limits, err)
		case tc.code != "" && (!errors.As(err, &pe) || pe.Code != tc.code):
			t.Errorf("%+v: %v, want %s", tc.limits, err, tc.code)
		}
	}
}

// EncodeBody writes a hand-encoded body in place in its envelope: the
// bytes must be Encode(NewEnvelope(...))'s, for those bodies and for one
// msgpack encodes (an error message).
func TestEncodeBodyMatchesEncode(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var bodies []Body
	for _, v := range hotValues(rng, 30) {
		if b, ok := v.(Body); ok {
			bodies = append(bodies, b)
		}
	}
	bodies = append(bodies, &Error{Code: CodeBusy, Message: "busy"}, &OK{})
	kinds := map[MessageType]bool{}
	for i, body := range bodies {
		id := uint64(i * 977)
		e, err := NewEnvelope(id, body)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := EncodeBody(id, body)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%T: EncodeBody differs from Encode(NewEnvelope)\n got %x\nwant %x", body, got[:min(len(got), 200)], want[:min(len(want), 200)])
		}
		kinds[body.MessageType()] = true
	}
	for _, k := range []MessageType{TypeChanges, TypeLive, TypePush, TypeAck, TypeError, TypeOK} {
		if !kinds[k] {
			t.Fatalf("no %s body was compared", k)
		}
	}
}
