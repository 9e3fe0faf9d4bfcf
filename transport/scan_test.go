package transport

import (
	"bytes"
	"errors"
	"testing"
)

func TestScanAcceptsWellFormed(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"fixint", []byte{0x05}},
		{"negative fixint", []byte{0xff}},
		{"nil", []byte{0xc0}},
		{"bools", []byte{0x92, 0xc2, 0xc3}},
		{"uint64", []byte{0xcf, 1, 2, 3, 4, 5, 6, 7, 8}},
		{"int8", []byte{0xd0, 0x80}},
		{"float32", []byte{0xca, 0, 0, 0, 0}},
		{"float64", []byte{0xcb, 0, 0, 0, 0, 0, 0, 0, 0}},
		{"fixstr", []byte{0xa3, 'a', 'b', 'c'}},
		{"str8", []byte{0xd9, 2, 'h', 'i'}},
		{"str16", []byte{0xda, 0, 1, 'x'}},
		{"str32", []byte{0xdb, 0, 0, 0, 1, 'x'}},
		{"bin8", []byte{0xc4, 2, 1, 2}},
		{"bin16 empty", []byte{0xc5, 0, 0}},
		{"bin32", []byte{0xc6, 0, 0, 0, 1, 9}},
		{"fixext1", []byte{0xd4, 1, 0}},
		{"fixext16", append([]byte{0xd8, 1}, make([]byte, 16)...)},
		{"ext8", []byte{0xc7, 2, 5, 0, 0}},
		{"ext16", []byte{0xc8, 0, 1, 5, 0}},
		{"ext32", []byte{0xc9, 0, 0, 0, 0, 5}},
		{"empty array32", []byte{0xdd, 0, 0, 0, 0}},
		{"array16", []byte{0xdc, 0, 2, 1, 2}},
		{"map16", []byte{0xde, 0, 1, 0xa1, 'k', 0xc0}},
		{"map32 empty", []byte{0xdf, 0, 0, 0, 0}},
		{"nested", []byte{0x81, 0xa1, 'a', 0x92, 0x91, 0x90, 0x80}},
	} {
		if err := Scan(tc.b, 8); err != nil {
			t.Errorf("%s: Scan(% x) = %v, want nil", tc.name, tc.b, err)
		}
	}
}

func TestScanRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty input", nil, ErrBadFrame},
		{"array32 of 4G elements", []byte{0xdd, 0xff, 0xff, 0xff, 0xff}, ErrBadFrame},
		{"map32 of 4G entries", []byte{0xdf, 0xff, 0xff, 0xff, 0xff}, ErrBadFrame},
		{"str32 of 4G bytes", []byte{0xdb, 0xff, 0xff, 0xff, 0xff}, ErrBadFrame},
		{"bin32 of 4G bytes", []byte{0xc6, 0xff, 0xff, 0xff, 0xff}, ErrBadFrame},
		{"ext32 of 4G bytes", []byte{0xc9, 0xff, 0xff, 0xff, 0xff, 1}, ErrBadFrame},
		{"array one short", []byte{0x93, 1, 2}, ErrBadFrame},
		{"map needs two bytes per entry", []byte{0x82, 1, 2, 3}, ErrBadFrame},
		{"str one short", []byte{0xa3, 'a', 'b'}, ErrBadFrame},
		{"truncated length", []byte{0xda, 0x01}, ErrBadFrame},
		{"truncated uint64", []byte{0xcf, 1, 2}, ErrBadFrame},
		{"truncated fixext", []byte{0xd5, 1, 0}, ErrBadFrame},
		{"invalid code", []byte{0xc1}, ErrBadFrame},
		{"trailing bytes", []byte{0xc0, 0xc0}, ErrBadFrame},
		{"too deep", append(bytes.Repeat([]byte{0x91}, 9), 0xc0), ErrTooLarge},
	} {
		err := Scan(tc.b, 8)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Scan(% x) = %v, want %v", tc.name, tc.b, err, tc.want)
		}
	}
}

// TestScanHostilePayloads keeps two known hostile payloads, which kill the
// process when fed to msgpack unchecked: an array whose header claims four
// billion entries, and arrays nested 20,000 deep.
func TestScanHostilePayloads(t *testing.T) {
	if err := Scan([]byte{0xdd, 0xff, 0xff, 0xff, 0xff}, DefaultMaxDepth); !errors.Is(err, ErrBadFrame) {
		t.Errorf("dd ff ff ff ff: %v, want bad_frame", err)
	}
	deep := bytes.Repeat([]byte{0xdc, 0xff, 0xff}, 20000)
	if err := Scan(deep, DefaultMaxDepth); err == nil {
		t.Error("20,000 × dc ff ff: accepted")
	}
	// Lengths that fit, so only the depth bound stops it.
	nested := append(bytes.Repeat([]byte{0x91}, 20000), 0xc0)
	if err := Scan(nested, DefaultMaxDepth); !errors.Is(err, ErrTooLarge) {
		t.Errorf("20,000 nested fixarrays: %v, want too_large", err)
	}
}

func TestScanDepthBoundary(t *testing.T) {
	nest := func(n int) []byte { return append(bytes.Repeat([]byte{0x91}, n), 0xc0) }
	if err := Scan(nest(32), 32); err != nil {
		t.Errorf("depth 32 at max 32: %v", err)
	}
	if err := Scan(nest(33), 32); !errors.Is(err, ErrTooLarge) {
		t.Errorf("depth 33 at max 32: %v, want too_large", err)
	}
	// A container that is the last element of its parent is still nested.
	last := []byte{0x92, 0x01, 0x92, 0x01, 0x91, 0xc0} // [1, [1, [nil]]]
	if err := Scan(last, 2); !errors.Is(err, ErrTooLarge) {
		t.Errorf("depth 3 through last elements at max 2: %v, want too_large", err)
	}
	if err := Scan(last, 3); err != nil {
		t.Errorf("depth 3 at max 3: %v", err)
	}
	// Siblings do not add depth.
	if err := Scan([]byte{0x93, 0x90, 0x90, 0x90}, 2); err != nil {
		t.Errorf("three empty siblings at max 2: %v", err)
	}
}

func TestScanItems(t *testing.T) {
	arr := append([]byte{0xdc, 0x00, 0x0a}, bytes.Repeat([]byte{0xc0}, 10)...)
	if err := scan(arr, 4, 10); err != nil {
		t.Errorf("10 items at max 10: %v", err)
	}
	if err := scan(arr, 4, 9); !errors.Is(err, ErrTooLarge) {
		t.Errorf("10 items at max 9: %v, want too_large", err)
	}
	m := []byte{0x82, 1, 2, 3, 4} // two entries count as two
	if err := scan(m, 4, 2); err != nil {
		t.Errorf("map of 2 at max 2: %v", err)
	}
	if err := scan(m, 4, 1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("map of 2 at max 1: %v, want too_large", err)
	}
}

func TestScanDoesNotAllocate(t *testing.T) {
	frame := append(bytes.Repeat([]byte{0x91}, 30), 0xc0)
	allocs := testing.AllocsPerRun(10, func() {
		if err := Scan(frame, DefaultMaxDepth); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Scan allocated %v times per run", allocs)
	}
}
