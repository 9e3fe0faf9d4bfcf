package transport

import (
	"math"
	"math/big"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// intField is one integer field of a wire type, found by reflection.
type intField struct {
	owner  reflect.Type // the envelope or body type
	path   []string     // msgpack keys; "[]" steps into the first element
	typ    reflect.Type
	signed bool
}

func (f intField) String() string {
	return f.owner.Name() + "." + strings.ReplaceAll(strings.Join(f.path, "."), ".[]", "[]")
}

// intFields lists every integer field reachable from t.
func intFields(owner, t reflect.Type, path []string) []intField {
	switch t.Kind() {
	case reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uint, reflect.Int, reflect.Int64, reflect.Int32, reflect.Int16, reflect.Int8, reflect.Uint8:
		return []intField{{owner: owner, path: slices.Clone(path), typ: t, signed: t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64}}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return nil
		}
		return intFields(owner, t.Elem(), append(path, "[]"))
	case reflect.Struct:
		var out []intField
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("msgpack"), ",")
			out = append(out, intFields(owner, f.Type, append(path, name))...)
		}
		return out
	}
	return nil
}

// rangeSamples returns a valid value of each wire type, envelope first,
// with every slice on the way to an integer non-empty.
func rangeSamples() []any {
	out := []any{&Envelope{V: 1, Type: TypeOK, ID: 1, Body: msgpack.RawMessage{0x80}}}
	for _, b := range sampleBodies() {
		out = append(out, b)
	}
	return out
}

// TestEveryIntFieldIsListed pins the integer fields of the protocol, so a
// new one is added here, and to the range tests below, on purpose.
func TestEveryIntFieldIsListed(t *testing.T) {
	var got []string
	for _, s := range rangeSamples() {
		for _, f := range intFields(reflect.TypeOf(s).Elem(), reflect.TypeOf(s).Elem(), nil) {
			got = append(got, f.String()+" "+f.typ.Kind().String())
		}
	}
	want := []string{
		"Envelope.v uint16", "Envelope.id uint64",
		"Hello.versions[] uint16",
		"Welcome.version uint16",
		"Welcome.limits.max_frame int", "Welcome.limits.max_batch int", "Welcome.limits.max_record int",
		"Welcome.limits.max_depth int", "Welcome.limits.max_items int", "Welcome.limits.max_inflated int",
		"Welcome.limits.max_record_ops int",
		"Pull.cursor uint64", "Pull.limit uint32",
		"Changes.records[].seq uint64", "Changes.next uint64",
		"Push.fence uint64", "Push.records[].seq uint64",
		"Ack.seq uint64", "Ack.from uint64",
		"Subscribe.cursor uint64",
		"Live.records[].seq uint64", "Live.next uint64",
		"LeaseAcquire.ttl_ms uint32", "LeaseAcquire.wait_ms uint32",
		"LeaseRenew.fence uint64", "LeaseRenew.ttl_ms uint32",
		"LeaseRelease.fence uint64",
		"Lease.fence uint64", "Lease.expires_ms int64", "Lease.ttl_ms uint32",
		"Error.retry_ms uint32",
	}
	if !slices.Equal(got, want) {
		t.Errorf("integer fields:\n got %q\nwant %q", got, want)
	}
}

// bounds returns the values at and just past the range of an integer type.
func bounds(t reflect.Type, signed bool) (ok, bad []*big.Int) {
	bits := t.Bits()
	one := big.NewInt(1)
	if signed {
		max := new(big.Int).Sub(new(big.Int).Lsh(one, uint(bits-1)), one)
		min := new(big.Int).Neg(new(big.Int).Lsh(one, uint(bits-1)))
		ok = []*big.Int{min, big.NewInt(-1), big.NewInt(0), max}
		bad = []*big.Int{new(big.Int).Add(max, one), new(big.Int).Sub(min, one)}
	} else {
		max := new(big.Int).Sub(new(big.Int).Lsh(one, uint(bits)), one)
		ok = []*big.Int{big.NewInt(0), max}
		bad = []*big.Int{new(big.Int).Add(max, one), big.NewInt(-1), big.NewInt(math.MinInt64)}
	}
	// msgpack holds integers from -2^63 to 2^64-1.
	fits := func(v *big.Int) bool { return v.IsInt64() || v.IsUint64() }
	return slices.DeleteFunc(ok, func(v *big.Int) bool { return !fits(v) }),
		slices.DeleteFunc(bad, func(v *big.Int) bool { return !fits(v) })
}

func wire(v *big.Int) any {
	if v.IsInt64() {
		return v.Int64()
	}
	return v.Uint64()
}

// withValue returns sample as generic msgpack with the field at path set
// to v.
func withValue(t *testing.T, sample any, path []string, v any) []byte {
	t.Helper()
	b, err := marshal(sample)
	if err != nil {
		t.Fatal(err)
	}
	var m any
	if err := msgpack.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	set(t, &m, path, v)
	return mustMarshal(m)
}

func set(t *testing.T, at *any, path []string, v any) {
	t.Helper()
	if len(path) == 0 {
		*at = v
		return
	}
	switch x := (*at).(type) {
	case map[string]any:
		e := x[path[0]]
		set(t, &e, path[1:], v)
		x[path[0]] = e
	case []any:
		if len(x) == 0 {
			t.Fatalf("sample has an empty list on the way to %v", path)
		}
		set(t, &x[0], path[1:], v)
	default:
		t.Fatalf("sample has %T on the way to %v", *at, path)
	}
}

// get reads the field at path of a decoded value.
func get(v reflect.Value, path []string) reflect.Value {
	for _, k := range path {
		v = reflect.Indirect(v)
		if k == "[]" {
			v = v.Index(0)
			continue
		}
		t := v.Type()
		for i := range t.NumField() {
			if name, _, _ := strings.Cut(t.Field(i).Tag.Get("msgpack"), ","); name == k {
				v = v.Field(i)
				break
			}
		}
	}
	return v
}

// TestIntegersOutOfRangeAreRefused covers every integer field of every
// wire type with the boundary values (accepted, decoded exactly) and the
// values just past them, and -1 for unsigned fields (refused, not
// truncated or wrapped).
func TestIntegersOutOfRangeAreRefused(t *testing.T) {
	n := 0
	for _, sample := range rangeSamples() {
		typ := reflect.TypeOf(sample).Elem()
		for _, f := range intFields(typ, typ, nil) {
			ok, bad := bounds(f.typ, f.signed)
			for _, v := range ok {
				b := withValue(t, sample, f.path, wire(v))
				dst := reflect.New(typ)
				if err := unmarshal(b, dst.Interface()); err != nil {
					t.Errorf("%s = %s: %v", f, v, err)
					continue
				}
				got := get(dst, f.path)
				var s string
				if f.signed {
					s = strconv.FormatInt(got.Int(), 10)
				} else {
					s = strconv.FormatUint(got.Uint(), 10)
				}
				if s != v.String() {
					t.Errorf("%s = %s decoded as %s", f, v, s)
				}
				n++
			}
			for _, v := range bad {
				b := withValue(t, sample, f.path, wire(v))
				err := unmarshal(b, reflect.New(typ).Interface())
				if err == nil {
					t.Errorf("%s = %s accepted", f, v)
					continue
				}
				if !strings.Contains(err.Error(), "out of range") {
					t.Errorf("%s = %s: %v, want an out of range error", f, v, err)
				}
				n++
			}
		}
	}
	if n < 100 {
		t.Fatalf("only %d cases ran", n)
	}
}

// TestOutOfRangeIsBadFrame checks the cases end to end: the frame
// or the body is refused with bad_frame.
func TestOutOfRangeIsBadFrame(t *testing.T) {
	body := func(typ MessageType, m map[string]any) []byte {
		return rawFrame(1, string(typ), 1, mustMarshal(m))
	}
	for _, tc := range []struct {
		name  string
		frame []byte
		body  bool // refused by Message, not Decode
	}{
		{"v 65537", rawFrame(65537, "ok", 1, []byte{0x80}), false},
		{"v 65537 hello", rawFrame(65537, "hello", 1, mustMarshal(map[string]any{"versions": []int{1}})), false},
		{"id -1", rawFrame(1, "ok", -1, []byte{0x80}), false},
		{"versions 65537", body(TypeHello, map[string]any{"versions": []int{65537}}), true},
		{"ttl_ms -1", body(TypeLeaseAcquire, map[string]any{"collection": "c", "ttl_ms": -1}), true},
		{"ttl_ms 2^32+1", body(TypeLeaseAcquire, map[string]any{"collection": "c", "ttl_ms": uint64(1)<<32 + 1}), true},
		{"wait_ms -5", body(TypeLeaseAcquire, map[string]any{"collection": "c", "ttl_ms": 1, "wait_ms": -5}), true},
		{"limit 2^32", body(TypePull, map[string]any{"collection": "c", "limit": uint64(1) << 32}), true},
		{"cursor -1", body(TypePull, map[string]any{"collection": "c", "cursor": -1}), true},
		{"fence -1", body(TypePush, map[string]any{"collection": "c", "fence": -1, "records": []any{map[string]any{"record": "r", "data": []byte{1}}}}), true},
		{"seq -1", body(TypePush, map[string]any{"collection": "c", "records": []any{map[string]any{"record": "r", "data": []byte{1}, "seq": -1}}}), true},
		{"expires_ms 2^63", body(TypeLease, map[string]any{"collection": "c", "fence": 1, "expires_ms": uint64(1) << 63}), true},
		{"retry_ms 2^32", body(TypeError, map[string]any{"code": "rate_limited", "retry_ms": uint64(1) << 32}), true},
		{"record as an array", body(TypePush, map[string]any{"collection": "c", "records": []any{[]any{"r", 0, false, []byte{1}, nil}}}), true},
	} {
		e, err := Decode(tc.frame)
		if !tc.body {
			wantCode(t, tc.name, err, CodeBadFrame)
			continue
		}
		if err != nil {
			t.Errorf("%s: Decode: %v", tc.name, err)
			continue
		}
		_, err = e.Message()
		wantCode(t, tc.name, err, CodeBadFrame)
	}
}

// TestIntegerEncodings reads every msgpack integer format.
func TestIntegerEncodings(t *testing.T) {
	for _, tc := range []struct {
		b   []byte
		neg bool
		mag uint64
	}{
		{[]byte{0x00}, false, 0},
		{[]byte{0x7f}, false, 127},
		{[]byte{0xff}, true, 1},
		{[]byte{0xe0}, true, 32},
		{[]byte{0xcc, 0xff}, false, 255},
		{[]byte{0xcd, 0xff, 0xff}, false, 65535},
		{[]byte{0xce, 0xff, 0xff, 0xff, 0xff}, false, 1<<32 - 1},
		{[]byte{0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, false, math.MaxUint64},
		{[]byte{0xd0, 0x80}, true, 128},
		{[]byte{0xd0, 0x7f}, false, 127},
		{[]byte{0xd1, 0x80, 0x00}, true, 1 << 15},
		{[]byte{0xd2, 0xff, 0xff, 0xff, 0xff}, true, 1},
		{[]byte{0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0}, true, 1 << 63},
		{[]byte{0xd3, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, false, math.MaxInt64},
	} {
		w := intWalker{b: tc.b}
		neg, mag, ok, err := w.integer()
		if err != nil || !ok || neg != tc.neg || mag != tc.mag || w.pos != len(tc.b) {
			t.Errorf("% x: neg=%v mag=%d ok=%v err=%v pos=%d; want neg=%v mag=%d", tc.b, neg, mag, ok, err, w.pos, tc.neg, tc.mag)
		}
	}
	// Truncated integers are errors, not panics.
	for _, b := range [][]byte{{0xcd, 0xff}, {0xd3, 0}, {0xcf}} {
		w := intWalker{b: b}
		if _, _, _, err := w.integer(); err == nil {
			t.Errorf("% x: no error", b)
		}
	}
}

// TestCheckIntsSkipsOtherValues walks values of every msgpack kind in
// fields it does not check, and values of the wrong kind in integer
// fields, which it leaves for the decoder to refuse.
func TestCheckIntsSkipsOtherValues(t *testing.T) {
	odd := map[string]any{
		"collection": "c",
		"future":     []any{1, "x", 1.5, map[string]any{"a": []any{nil, true}}, []byte{1, 2}, msgpack.RawMessage{0xd4, 1, 2}},
		"cursor":     nil,
		"limit":      "ten",
	}
	b := mustMarshal(odd)
	if err := checkInts(b, new(Pull)); err != nil {
		t.Errorf("checkInts: %v", err)
	}
	for i := range len(b) {
		// Every prefix is an error or accepted, never a panic.
		_ = checkInts(b[:i], new(Pull))
	}
}
