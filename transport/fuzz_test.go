package transport

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/fuzz/FuzzDecode from the inputs in fuzz_test.go")

// hostileSeeds are frames that have killed msgpack decoders or probe the
// scanner's edges. The nesting bombs repeat 200 times, not the 20,000 of
// the unit tests: the path through Scan is the same, and a 240 KB seed makes
// the fuzzer spend its time minimizing instead of exploring.
func hostileSeeds() map[string][]byte {
	huge := []byte{0xdd, 0xff, 0xff, 0xff, 0xff}
	return map[string][]byte{
		"hostile_array32_4g":         huge,
		"hostile_array32_4g_in_body": rawFrame(1, "push", 1, huge),
		"hostile_array32_4g_records": rawFrame(1, "push", 1, bodyWith(map[string]any{"collection": "c"}, "records", huge)),
		"hostile_array16_nested":     bytes.Repeat([]byte{0xdc, 0xff, 0xff}, 200),
		"hostile_fixarray_nested":    append(bytes.Repeat([]byte{0x91}, 200), 0xc0),
		"hostile_str32_4g_type":      append([]byte{0x81, 0xa4, 't', 'y', 'p', 'e', 0xdb, 0xff, 0xff, 0xff, 0xff}, "pull"...),
		"hostile_bin32_4g_data":      rawFrame(1, "push", 1, bodyWith(nil, "records", append([]byte{0x91, 0x81, 0xa4, 'd', 'a', 't', 'a', 0xc6, 0xff, 0xff, 0xff, 0xff}, 0))),
		"hostile_map32_4g_body":      rawFrame(1, "pull", 1, []byte{0xdf, 0xff, 0xff, 0xff, 0xff}),
		"hostile_ext32_4g":           rawFrame(1, "ok", 1, []byte{0xc9, 0xff, 0xff, 0xff, 0xff, 1}),
		"wrong_type_cursor":          rawFrame(1, "pull", 1, mustMarshal(map[string]any{"collection": "c", "cursor": "abc"})),
		"unknown_type":               rawFrame(1, "teleport", 1, []byte{0x80}),
		"version_2":                  rawFrame(2, "pull", 1, mustMarshal(map[string]any{"collection": "c"})),
		"trailing_byte":              append(mustFrame(1, &OK{}), 0xc0),
		"out_of_range_v":             rawFrame(65537, "ok", 1, []byte{0x80}),
		"out_of_range_ttl":           rawFrame(1, "lease_acquire", 1, mustMarshal(map[string]any{"collection": "c", "ttl_ms": uint64(1)<<32 + 1})),
	}
}

// TestWriteFuzzCorpus writes the seed corpus when run with -update-corpus;
// otherwise it checks that every seed is on disk, so go test runs them.
func TestWriteFuzzCorpus(t *testing.T) {
	inputs := hostileSeeds()
	for i, b := range sampleBodies() {
		inputs[fmt.Sprintf("valid_%s", b.MessageType())] = mustFrame(uint64(i+1), b)
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	for name, b := range inputs {
		path := filepath.Join(dir, name)
		want := "go test fuzz v1\n[]byte(" + strconv.QuoteToASCII(string(b)) + ")\n"
		if *updateCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("seed %s missing or stale (err %v); run go test -run TestWriteFuzzCorpus -update-corpus", name, err)
		}
	}
}

// FuzzDecode feeds arbitrary frames through the whole receive path. A frame
// either fails with a protocol *Error of a decode code, or decodes into a
// body that survives a round trip unchanged. It must never panic or
// allocate without bound (the fuzzer's memory limit catches that).
func FuzzDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, frame []byte) {
		e, err := Decode(frame)
		if err != nil {
			mustBeDecodeError(t, "Decode", err)
			return
		}
		body, err := e.Message()
		if err != nil {
			mustBeDecodeError(t, "Message", err)
			return
		}
		frame2 := mustFrame(e.ID, body)
		e2, err := Decode(frame2)
		if err != nil {
			t.Fatalf("re-encoded %s does not decode: %v", e.Type, err)
		}
		body2, err := e2.Message()
		if err != nil {
			t.Fatalf("re-encoded %s body does not decode: %v", e.Type, err)
		}
		if !reflect.DeepEqual(body, body2) {
			t.Fatalf("%s round trip changed the body:\n%#v\n%#v", e.Type, body, body2)
		}
	})
}

func mustBeDecodeError(t *testing.T, what string, err error) {
	t.Helper()
	var pe *Error
	if !errors.As(err, &pe) {
		t.Fatalf("%s: %v is not a *Error", what, err)
	}
	switch pe.Code {
	case CodeBadFrame, CodeTooLarge, CodeUnsupportedVersion:
	default:
		t.Fatalf("%s: unexpected code %q: %v", what, pe.Code, err)
	}
}
