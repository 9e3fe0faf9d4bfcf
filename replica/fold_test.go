package replica

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// A record whose snapshot is large folds its chunks less often than
// CompactAfter says, as each fold saves the whole record: here a snapshot of
// 3 to 4 KiB waits for four times as many chunks, then folds; every write
// reads back after a cold load.
func TestFoldWaitsLongerForALargeSnapshot(t *testing.T) {
	r := open(t, t.TempDir(), &Options{CompactAfter: 4})
	c := coll(t, r, "c")
	rng := rand.New(rand.NewPCG(1, 2))
	pad := make([]byte, 4<<10)
	for i := range pad {
		pad[i] = byte('!' + rng.IntN(94)) // compresses little
	}
	if err := c.Put("rec", map[string]any{"pad": string(pad)}); err != nil {
		t.Fatal(err)
	}
	// Fold once, so the snapshot holds the pad.
	for i := range 4 {
		if err := c.Update2(t, "rec", i); err != nil {
			t.Fatal(err)
		}
	}
	_, m, _ := r.cache.get(cacheKey("c", "rec"))
	if m.snapBytes < 3<<10 {
		t.Fatalf("snapshot of %d bytes, want the pad folded in", m.snapBytes)
	}
	want := foldAfter(4, m.snapBytes)
	if want != 16 {
		t.Fatalf("a %d-byte snapshot folds after %d chunks, want 16 (four times CompactAfter)", m.snapBytes, want)
	}
	most := 0
	for i := 4; i < 4+2*want; i++ {
		if err := c.Update2(t, "rec", i); err != nil {
			t.Fatal(err)
		}
		_, m, _ := r.cache.get(cacheKey("c", "rec"))
		most = max(most, m.chunks)
	}
	if most != want-1 {
		t.Fatalf("at most %d chunks between folds, want %d", most, want-1)
	}
	r.cache.drop(cacheKey("c", "rec"))
	var got map[string]any
	if err := c.Get("rec", &got); err != nil {
		t.Fatal(err)
	}
	for i := range 4 + 2*want {
		if got[fmt.Sprint("f", i)] != int64(i) {
			t.Fatalf("field f%d = %v after a cold load", i, got[fmt.Sprint("f", i)])
		}
	}
}
