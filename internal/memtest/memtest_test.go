package memtest

import (
	"bytes"
	"fmt"
	"os"
	"testing"
)

// TestRunMeasuresWithoutRace: the process Run starts runs this test
// without the race detector, whether or not this one has it, and reads
// its resident memory.
func TestRunMeasuresWithoutRace(t *testing.T) {
	if os.Getenv("FERRY_MEMTEST_TEST") != "" {
		fmt.Printf("memtest: race %v resident %d\n", raceEnabled, Resident(t))
		return
	}
	out := Run(t, "FERRY_MEMTEST_TEST=1")
	i := bytes.Index(out, []byte("memtest:"))
	if i < 0 {
		t.Fatalf("no measurement in\n%s", out)
	}
	var race bool
	var resident int64
	if _, err := fmt.Sscanf(string(out[i:]), "memtest: race %t resident %d", &race, &resident); err != nil {
		t.Fatalf("%v in %q", err, out[i:])
	}
	if race || resident <= 0 {
		t.Fatalf("the measuring process ran with the race detector %v, resident %d bytes", race, resident)
	}
}
