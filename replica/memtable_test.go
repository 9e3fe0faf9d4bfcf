package replica

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A store whose memtable logs were written with larger memtables than
// today's (by an older Ferry, stopped without closing the store) opens,
// with everything written to those logs.
func TestOpenAfterLargerMemtables(t *testing.T) {
	if dir := os.Getenv(envLargeMemChild); dir != "" {
		largeMemChild(t, dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestOpenAfterLargerMemtables$", "-test.count=1")
	cmd.Env = append(os.Environ(), envLargeMemChild+"="+dir)
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != largeMemExit {
		t.Fatalf("child exited with %d (%v): %s", code, err, out)
	}
	mems, _ := filepath.Glob(filepath.Join(dir, "*.mem"))
	var largest int64
	for _, m := range mems {
		if st, err := os.Stat(m); err == nil {
			largest = max(largest, st.Size())
		}
	}
	if largest <= 2*memTableSize {
		t.Fatalf("the child left memtable logs of at most %d bytes (%d logs), want one for a memtable larger than %d", largest, len(mems), memTableSize)
	}
	r := open(t, dir, nil)
	c := r.Collection("c")
	for i, want := range largeMemRecords() {
		var got map[string]any
		if err := c.Get(fmt.Sprintf("r%02d", i), &got); err != nil || got["body"] != want {
			t.Fatalf("r%02d after reopening: %d bytes, %v", i, len(fmt.Sprint(got["body"])), err)
		}
	}
}

const (
	envLargeMemChild = "FERRY_TEST_LARGE_MEMTABLE_DIR"
	largeMemExit     = 7
)

// largeMemRecords are the bodies of 12 MiB of records, each under the
// value threshold, which a 32 MiB memtable keeps in its log.
func largeMemRecords() []string {
	var bodies []string
	for i := range 96 {
		bodies = append(bodies, strings.Repeat(string(rune('a'+i%26)), 128<<10)+fmt.Sprint(i))
	}
	return bodies
}

// largeMemChild is TestOpenAfterLargerMemtables' process: it writes
// largeMemRecords, each durable, to the store in dir with 32 MiB
// memtables and exits without closing it.
func largeMemChild(t *testing.T, dir string) {
	r, err := Open(dir, &Options{memTableSize: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c := r.Collection("c")
	for i, body := range largeMemRecords() {
		if err := c.Put(fmt.Sprintf("r%02d", i), map[string]any{"body": body}); err != nil {
			t.Fatal(err)
		}
	}
	os.Exit(largeMemExit)
}
