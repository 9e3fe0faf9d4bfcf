package relay

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/ferrysync/ferry/transport"
)

// deflateBomb returns a compressed change chunk of about 65 KB that
// inflates to 64 MiB (its checksum is garbage: framing inflates first).
// The DEFLATE stream is one flushed, byte-aligned block of 1 MiB of zeros
// repeated 64 times, then an empty final block: compressing 64 MiB would
// take seconds under the race detector.
func deflateBomb(t *testing.T) []byte {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestCompression)
	w.Write(make([]byte, 1<<20))
	w.Flush()
	stream := append(bytes.Repeat(buf.Bytes(), 64), 1, 0, 0, 0xff, 0xff)
	b := []byte{0x85, 0x6f, 0x4a, 0x83, 1, 2, 3, 4, 2}
	b = binary.AppendUvarint(b, uint64(len(stream)))
	return append(b, stream...)
}

// TestCompressionBombIsRefused: a 65 KB push whose change chunk inflates
// to 64 MiB is refused with too_large once it passes max_inflated, and the
// relay inflates about that much, not 64 MiB.
func TestCompressionBombIsRefused(t *testing.T) {
	tr := newTestRelay(t, NewMemStore(), nil)
	a := tr.client("shop")
	bomb := deflateBomb(t)
	// Two records share the push's budget: half of it each is too much.
	halves := make([]byte, transport.DefaultMaxRecord/2+1)
	rand.NewChaCha8([32]byte{}).Read(halves)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	_, err := call[transport.Ack](t, a, pushOf("c", 0, rec("bomb", bomb)))
	runtime.ReadMemStats(&ms)
	if !errors.Is(err, transport.ErrTooLarge) {
		t.Fatalf("bomb push: %v, want too_large", err)
	}
	// The budget is 1 MiB; the whole round trip, client included,
	// allocates a few times that. Inflating the bomb took 165 MB.
	if used := ms.TotalAlloc - before; used > 16<<20 {
		t.Errorf("refusing the bomb allocated %d bytes", used)
	}
	if h, _ := tr.store.Head(context.Background(), Coll{"shop", "c"}); h != 0 {
		t.Errorf("log head %d after the bomb", h)
	}
	// The session goes on.
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("r", newEditor(t, "bb01").edit(map[string]any{"ok": true}))))
}

// TestInflateBudgetIsPerPush: the budget covers every record of a push
// together, and each push gets a fresh one.
func TestInflateBudgetIsPerPush(t *testing.T) {
	tr := newTestRelay(t, NewMemStore(), func(o *Options) { o.Limits.MaxInflated = 60_000 })
	a := tr.client("shop")
	compressed := func(actor string) []byte {
		ch := newEditor(t, actor).edit(map[string]any{"text": string(bytes.Repeat([]byte{'q'}, 40_000))})
		_, ln := binary.Uvarint(ch[9:])
		var buf bytes.Buffer
		w, _ := flate.NewWriter(&buf, flate.BestCompression)
		w.Write(ch[9+ln:])
		w.Close()
		out := append(append([]byte{}, ch[:8]...), 2)
		out = binary.AppendUvarint(out, uint64(buf.Len()))
		return append(out, buf.Bytes()...)
	}
	x, y := compressed("ee01"), compressed("ee02")
	if len(x) > 2000 {
		t.Fatalf("compressed change is %d bytes", len(x))
	}
	if _, err := call[transport.Ack](t, a, pushOf("c", 0, rec("x", x), rec("y", y))); !errors.Is(err, transport.ErrTooLarge) {
		t.Fatalf("push inflating 80,000 bytes under a 60,000 budget: %v, want too_large", err)
	}
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("x", x)))
	mustCall[transport.Ack](t, a, pushOf("c", 0, rec("y", y)))
	doc, _, _ := tr.store.Document(context.Background(), Coll{"shop", "c"}, "y")
	if s, _ := fieldsAfter(t, doc)["text"].(string); len(s) != 40_000 {
		t.Errorf("stored text is %d bytes", len(s))
	}
}
