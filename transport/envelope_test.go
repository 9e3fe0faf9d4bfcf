package transport

import (
	"bytes"
	"encoding/hex"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func TestRoundTripEveryType(t *testing.T) {
	seen := map[MessageType]bool{}
	for i, want := range sampleBodies() {
		id := uint64(i + 1)
		e, err := Decode(mustFrame(id, want))
		if err != nil {
			t.Fatalf("%s: Decode: %v", want.MessageType(), err)
		}
		if e.V != ProtocolVersion || e.Type != want.MessageType() || e.ID != id {
			t.Errorf("%s: envelope v=%d type=%q id=%d", want.MessageType(), e.V, e.Type, e.ID)
		}
		got, err := e.Message()
		if err != nil {
			t.Fatalf("%s: Message: %v", want.MessageType(), err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: round trip\n got %#v\nwant %#v", want.MessageType(), got, want)
		}
		seen[want.MessageType()] = true
	}
	for _, typ := range allTypes {
		if !seen[typ] {
			t.Errorf("no sample body of type %q", typ)
		}
	}
}

var allTypes = []MessageType{
	TypeHello, TypeWelcome, TypeAuth, TypePull, TypeChanges, TypePush,
	TypeAck, TypeSubscribe, TypeUnsubscribe, TypeLive, TypeLeaseAcquire,
	TypeLeaseRenew, TypeLeaseRelease, TypeLease, TypeOK, TypeError,
}

func TestDecodeBodyTyped(t *testing.T) {
	want := &Push{Collection: "c", Fence: 3, Records: []RecordChanges{{Record: "r", Data: []byte{1}}}}
	e, err := Decode(mustFrame(9, want))
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeBody[Push](e)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %#v, want %#v", got, want)
	}
	if _, err := DecodeBody[Pull](e); !errors.Is(err, ErrUnexpectedType) {
		t.Errorf("DecodeBody[Pull] of a push: %v, want ErrUnexpectedType", err)
	}
	if _, err := DecodeBody[Changes](&Envelope{Type: TypeLive, Body: e.Body}); !errors.Is(err, ErrUnexpectedType) {
		t.Errorf("DecodeBody[Changes] of a live: %v, want ErrUnexpectedType", err)
	}
}

// TestWireFormat pins the bytes of one message, the example in
// docs/protocol.md: a change here breaks every other implementation.
func TestWireFormat(t *testing.T) {
	for _, tc := range []struct {
		body Body
		id   uint64
		want string
	}{
		{&OK{}, 1, "84a17601a474797065a26f6ba2696401a4626f647980"},
		{&Pull{Collection: "todos", Limit: 100}, 7, "84a17601a474797065a470756c6ca2696407a4626f6479" +
			"83aa636f6c6c656374696f6ea5746f646f73a6637572736f7200a56c696d697464"},
	} {
		if got := hex.EncodeToString(mustFrame(tc.id, tc.body)); got != tc.want {
			t.Errorf("%s frame = %s, want %s", tc.body.MessageType(), got, tc.want)
		}
	}
	var keys map[string]msgpack.RawMessage
	if err := msgpack.Unmarshal(mustFrame(5, &Pull{Collection: "c"}), &keys); err != nil {
		t.Fatal(err)
	}
	names := slices.Sorted(maps.Keys(keys))
	if !slices.Equal(names, []string{"body", "id", "type", "v"}) {
		t.Errorf("envelope keys = %v", names)
	}
}

// wantCode asserts that err is a protocol *Error with code.
func wantCode(t *testing.T, what string, err error, code Code) {
	t.Helper()
	var pe *Error
	if !errors.As(err, &pe) {
		t.Errorf("%s: error %v is not a *Error", what, err)
		return
	}
	if pe.Code != code {
		t.Errorf("%s: code %q (%v), want %q", what, pe.Code, err, code)
	}
}

// bodyWith encodes a map body whose key k holds raw msgpack, after the
// other fields in sorted order, so that corpus entries built from it are stable.
func bodyWith(fields map[string]any, k string, raw []byte) []byte {
	b := []byte{0x80 | byte(len(fields)+1)}
	for _, name := range slices.Sorted(maps.Keys(fields)) {
		b = append(b, mustMarshal(name)...)
		b = append(b, mustMarshal(fields[name])...)
	}
	b = append(b, mustMarshal(k)...)
	return append(b, raw...)
}

func TestDecodeHostilePayloads(t *testing.T) {
	huge := []byte{0xdd, 0xff, 0xff, 0xff, 0xff}
	deep := bytes.Repeat([]byte{0xdc, 0xff, 0xff}, 20000)
	nested := append(bytes.Repeat([]byte{0x91}, 20000), 0xc0)
	manyNils := append([]byte{0xdd, 0, 1, 0, 0}, bytes.Repeat([]byte{0xc0}, 1<<16)...)
	for _, tc := range []struct {
		name  string
		frame []byte
		code  Code
	}{
		{"dd ff ff ff ff alone", huge, CodeBadFrame},
		{"dd ff ff ff ff as body", rawFrame(1, "push", 1, huge), CodeBadFrame},
		{"dd ff ff ff ff as records", rawFrame(1, "push", 1, bodyWith(map[string]any{"collection": "c"}, "records", huge)), CodeBadFrame},
		{"dd ff ff ff ff as heads", rawFrame(1, "push", 1, bodyWith(nil, "records", append([]byte{0x91, 0x81, 0xa5, 'h', 'e', 'a', 'd', 's'}, huge...))), CodeBadFrame},
		{"20,000 × dc ff ff alone", deep, CodeBadFrame},
		{"20,000 × dc ff ff as body", rawFrame(1, "pull", 1, deep), CodeBadFrame},
		{"20,000 nested arrays as body", rawFrame(1, "pull", 1, nested), CodeTooLarge},
		{"65,536 nil records", rawFrame(1, "push", 1, bodyWith(nil, "records", manyNils)), CodeTooLarge},
	} {
		_, err := Decode(tc.frame)
		wantCode(t, tc.name, err, tc.code)
	}
}

// TestDecodeBodyRescans covers envelopes not built by Decode: the body is
// scanned again before msgpack sees it.
// Without that scan, msgpack allocates 4G records here and the process dies.
func TestDecodeBodyRescans(t *testing.T) {
	huge := []byte{0xdd, 0xff, 0xff, 0xff, 0xff}
	for _, body := range [][]byte{
		huge,
		bodyWith(map[string]any{"collection": "c"}, "records", huge),
		bodyWith(nil, "records", append([]byte{0x91, 0x81, 0xa5, 'h', 'e', 'a', 'd', 's'}, huge...)),
	} {
		e := &Envelope{V: 1, Type: TypePush, ID: 1, Body: body}
		_, err := DecodeBody[Push](e)
		wantCode(t, "hand-built envelope", err, CodeBadFrame)
		_, err = e.Message()
		wantCode(t, "hand-built envelope via Message", err, CodeBadFrame)
	}
}

func TestDecodeTruncated(t *testing.T) {
	frame := mustFrame(3, sampleBodies()[4]) // changes
	for n := range len(frame) {
		_, err := Decode(frame[:n])
		wantCode(t, "prefix", err, CodeBadFrame)
	}
}

func TestDecodeWrongTypes(t *testing.T) {
	okBody := []byte{0x80}
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"v is a string", rawFrame("1", "ok", 1, okBody)},
		{"id is a string", rawFrame(1, "ok", "one", okBody)},
		{"type is an int", rawFrame(1, 7, 1, okBody)},
		{"envelope is an array", mustMarshal([]any{1, "ok", 1, map[string]any{}})},
		{"envelope is a string", mustMarshal("hello")},
		{"map key is an int", mustMarshal(map[int]int{1: 1})},
		{"no body", mustMarshal(map[string]any{"v": 1, "type": "ok", "id": 1})},
	} {
		_, err := Decode(tc.frame)
		wantCode(t, tc.name, err, CodeBadFrame)
	}

	// Bodies are decoded on demand, so their errors come from Message and
	// DecodeBody, for an error reply to that request.
	for _, tc := range []struct {
		name string
		typ  MessageType
		body []byte
	}{
		{"cursor is a string", TypePull, mustMarshal(map[string]any{"collection": "c", "cursor": "abc"})},
		{"collection is an int", TypePull, mustMarshal(map[string]any{"collection": 5})},
		{"records is a map", TypePush, mustMarshal(map[string]any{"collection": "c", "records": map[string]int{"a": 1}})},
		{"versions holds strings", TypeHello, mustMarshal(map[string]any{"versions": []string{"1"}})},
		{"body is a string", TypeAuth, mustMarshal("tok")},
		{"body is an array", TypeAuth, mustMarshal([]string{"tok"})},
	} {
		e, err := Decode(rawFrame(1, string(tc.typ), 1, tc.body))
		if err != nil {
			t.Errorf("%s: Decode: %v", tc.name, err)
			continue
		}
		_, err = e.Message()
		wantCode(t, tc.name, err, CodeBadFrame)
	}
}

func TestDecodeIgnoresUnknownFields(t *testing.T) {
	body := mustMarshal(map[string]any{"collection": "c", "cursor": 4, "future": []int{1, 2}})
	e, err := Decode(rawFrame(1, "pull", 2, body))
	if err != nil {
		t.Fatal(err)
	}
	p, err := DecodeBody[Pull](e)
	if err != nil {
		t.Fatal(err)
	}
	if p.Collection != "c" || p.Cursor != 4 {
		t.Errorf("pull = %+v", p)
	}
}

func TestDecodeUnknownType(t *testing.T) {
	_, err := Decode(rawFrame(1, "teleport", 1, []byte{0x80}))
	wantCode(t, "unknown type", err, CodeBadFrame)
	if err == nil || !strings.Contains(err.Error(), "teleport") {
		t.Errorf("error %v does not name the type", err)
	}
	_, err = (&Envelope{Type: "teleport", Body: []byte{0x80}}).Message()
	wantCode(t, "unknown type via Message", err, CodeBadFrame)
}

func TestDecodeVersion(t *testing.T) {
	_, err := Decode(rawFrame(2, "pull", 1, mustMarshal(map[string]any{"collection": "c"})))
	wantCode(t, "v=2 pull", err, CodeUnsupportedVersion)
	if !errors.Is(err, ErrUnsupportedVersion) {
		t.Errorf("errors.Is(%v, ErrUnsupportedVersion) = false", err)
	}
	_, err = Decode(mustMarshal(map[string]any{"type": "ok", "id": 1, "body": map[string]any{}}))
	wantCode(t, "missing v", err, CodeUnsupportedVersion)

	// A hello of any version decodes, so the relay can negotiate.
	e, err := Decode(rawFrame(9, "hello", 1, mustMarshal(map[string]any{"versions": []int{7, 9}})))
	if err != nil {
		t.Fatalf("v=9 hello: %v", err)
	}
	h, err := DecodeBody[Hello](e)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := Negotiate(h.Versions); ok {
		t.Errorf("Negotiate(%v) = %d, true; want false", h.Versions, v)
	}
	if v, ok := Negotiate([]uint16{9, 1, 0}); !ok || v != 1 {
		t.Errorf("Negotiate([9 1 0]) = %d, %v; want 1, true", v, ok)
	}
}

func TestDecodeOversized(t *testing.T) {
	frame := mustFrame(1, &Auth{Token: strings.Repeat("t", 100)})
	lim := Limits{MaxFrame: len(frame) - 1}
	_, err := lim.Decode(frame)
	wantCode(t, "frame over max_frame", err, CodeTooLarge)
	lim.MaxFrame = len(frame)
	if _, err := lim.Decode(frame); err != nil {
		t.Errorf("frame at max_frame: %v", err)
	}
}

func TestValidate(t *testing.T) {
	rec := func(data int, heads ...[]byte) RecordChanges {
		return RecordChanges{Record: "r", Data: make([]byte, data), Heads: heads}
	}
	lim := Limits{MaxBatch: 2, MaxRecord: 8}
	for _, tc := range []struct {
		name string
		body Body
		code Code // "" for valid
	}{
		{"push at limits", &Push{Collection: "c", Records: []RecordChanges{rec(8), rec(1, head(1))}}, ""},
		{"push over max_batch", &Push{Collection: "c", Records: []RecordChanges{rec(1), rec(1), rec(1)}}, CodeTooLarge},
		{"push data over max_record", &Push{Collection: "c", Records: []RecordChanges{rec(9)}}, CodeTooLarge},
		{"push without records", &Push{Collection: "c"}, CodeBadFrame},
		{"push record without data", &Push{Collection: "c", Records: []RecordChanges{rec(0)}}, CodeBadFrame},
		{"push without collection", &Push{Records: []RecordChanges{rec(1)}}, CodeBadFrame},
		{"short head", &Changes{Collection: "c", Records: []RecordChanges{rec(1, head(1)[:31])}}, CodeBadFrame},
		{"record without id", &Changes{Collection: "c", Records: []RecordChanges{{Data: []byte{1}}}}, CodeBadFrame},
		{"live over max_batch", &Live{Collection: "c", Records: []RecordChanges{rec(1), rec(1), rec(1)}}, CodeTooLarge},
		{"ack with long head", &Ack{Collection: "c", Records: []RecordAck{{Record: "r", Heads: [][]byte{make([]byte, 33)}}}}, CodeBadFrame},
		{"ack from past its seq", &Ack{Collection: "c", Seq: 4, From: 5}, CodeBadFrame},
		{"empty changes", &Changes{Collection: "c"}, ""},
		{"hello without versions", &Hello{}, CodeBadFrame},
		{"welcome without version", &Welcome{}, CodeBadFrame},
		{"auth without token", &Auth{}, CodeBadFrame},
		{"pull without collection", &Pull{}, CodeBadFrame},
		{"subscribe without collection", &Subscribe{}, CodeBadFrame},
		{"lease_acquire without ttl: the relay's default", &LeaseAcquire{Collection: "c"}, ""},
		{"lease_acquire without collection", &LeaseAcquire{TTLMS: 1}, CodeBadFrame},
		{"lease_renew without fence", &LeaseRenew{Collection: "c", TTLMS: 1}, CodeBadFrame},
		{"lease_release without fence", &LeaseRelease{Collection: "c"}, CodeBadFrame},
		{"lease without fence", &Lease{Collection: "c"}, CodeBadFrame},
		{"error without code", &Error{}, CodeBadFrame},
	} {
		err := lim.Validate(tc.body)
		if tc.code == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		wantCode(t, tc.name, err, tc.code)
		if !tc.body.MessageType().known() {
			continue
		}
		// The limits an envelope was decoded under apply to its body.
		e, err := lim.Decode(mustFrame(1, tc.body))
		if err != nil {
			t.Errorf("%s: Decode: %v", tc.name, err)
			continue
		}
		_, err = e.Message()
		wantCode(t, tc.name+" (decoded)", err, tc.code)
	}
	for _, b := range sampleBodies() {
		if err := DefaultLimits().Validate(b); err != nil {
			t.Errorf("sample %s: %v", b.MessageType(), err)
		}
	}
}

func TestErrorIs(t *testing.T) {
	err := error(&Error{Code: CodeStaleFence, Message: "fence 3, lease at 4"})
	wrapped := errors.Join(errors.New("push"), err)
	if !errors.Is(wrapped, ErrStaleFence) {
		t.Error("errors.Is(stale_fence, ErrStaleFence) = false")
	}
	if errors.Is(wrapped, ErrLeaseHeld) {
		t.Error("errors.Is(stale_fence, ErrLeaseHeld) = true")
	}
	if got := AsError(wrapped); got.Code != CodeStaleFence || got.Message != "fence 3, lease at 4" {
		t.Errorf("AsError = %+v", got)
	}
	if got := AsError(errors.New("disk on fire")); got.Code != CodeInternal || strings.Contains(got.Message, "disk") {
		t.Errorf("AsError(plain) = %+v; want internal without the text", got)
	}
	if AsError(nil) != nil {
		t.Error("AsError(nil) != nil")
	}
	// A local decode error keeps msgpack's error as its cause.
	_, derr := (&Envelope{Type: TypePull, Body: mustMarshal(map[string]any{"cursor": "x"})}).Message()
	if errors.Unwrap(derr) == nil {
		t.Errorf("decode error %v has no cause", derr)
	}
}
