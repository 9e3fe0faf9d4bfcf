package procmem

import (
	"errors"
	"runtime"
	"runtime/debug"
	"testing"
)

// Touching 64 MiB of fresh memory shows in both figures.
func TestReadSeesFreshMemory(t *testing.T) {
	if _, err := Read(); errors.Is(err, ErrUnavailable) {
		t.Skip(err)
	}
	// The heap's free pages given back first, so the allocation below
	// cannot reuse resident ones.
	debug.FreeOSMemory()
	before, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 64<<20)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	after, err := Read()
	runtime.KeepAlive(b)
	if err != nil {
		t.Fatal(err)
	}
	if after.Anonymous-before.Anonymous < 48<<20 || after.Resident-before.Resident < 48<<20 {
		t.Fatalf("before touching 64 MiB %+v, after %+v", before, after)
	}
	if after.Anonymous > after.Resident {
		t.Fatalf("anonymous memory %d past resident %d", after.Anonymous, after.Resident)
	}
}
