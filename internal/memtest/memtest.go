// Package memtest runs a test's memory measurement in a process of its
// own, started from a test binary of the same package built without the
// race detector, and reads that process's resident memory.
//
// A process of its own, because the allocators of a process that has
// already run other tests hold memory free for reuse, which new documents
// would take unseen. Without the race detector, because its shadow memory
// grows the resident set beside the Go heap, and under it
// crdt.ReleaseNative does not trim the C allocator that measurements
// start from: resident memory under it is not what the code takes. So
// `go test -race` checks the same bounds `go test` does: under it, Run
// builds the package's tests again with -race=false (`go test -c`: the
// compiled packages come from the build cache; the link runs once a test).
package memtest

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"

	"github.com/ferrysync/ferry/internal/procmem"
)

// childVar marks the processes Run starts.
const childVar = "FERRY_MEMTEST_CHILD"

var (
	binMu sync.Mutex
	bins  = map[*testing.T]string{} // a test's measuring binary, built once for all its Run calls
)

// Run runs t's test again in a process of its own, with env ("KEY=value")
// added to this process's environment, so that the test can tell it is
// the measuring process; it returns what that process printed, and fails
// t if it failed. The process runs this test binary when it was built
// without the race detector, else one built now without it (with the same
// build tags). It skips t where resident memory cannot be read.
func Run(t *testing.T, env ...string) []byte {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("resident memory is read from /proc")
	}
	cmd := exec.Command(binary(t), "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), childVar+"=1"), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the measuring process (%s): %v\n%s", strings.Join(env, " "), err, out)
	}
	return out
}

// binary returns the test binary Run starts for t.
func binary(t *testing.T) string {
	t.Helper()
	if !raceEnabled {
		return os.Args[0]
	}
	binMu.Lock()
	defer binMu.Unlock()
	if bin, ok := bins[t]; ok {
		return bin
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("memory is measured by a build without the race detector, which needs the go command: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "measure.test")
	args := []string{"test", "-c", "-race=false", "-o", bin}
	if tags := buildTags(); tags != "" {
		args = append(args, "-tags="+tags)
	}
	// A test runs in its package's directory: "." is this package.
	build := exec.Command(goCmd, append(args, ".")...)
	var stderr bytes.Buffer
	build.Stderr = &stderr
	if err := build.Run(); err != nil {
		t.Fatalf("building the package's tests without the race detector: %v\n%s", err, stderr.String())
	}
	bins[t] = bin
	t.Cleanup(func() {
		binMu.Lock()
		delete(bins, t)
		binMu.Unlock()
	})
	return bin
}

// buildTags returns the build tags this binary was built with.
func buildTags() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, s := range bi.Settings {
		if s.Key == "-tags" {
			return s.Value
		}
	}
	return ""
}

// Resident returns this process's resident memory, in bytes, from
// /proc/self/statm. It skips t where there is none, and fails it in a
// process Run started that has the race detector (which would measure the
// detector's memory too).
func Resident(t testing.TB) int64 {
	t.Helper()
	if raceEnabled && os.Getenv(childVar) != "" {
		t.Fatal("the measuring process was built with the race detector")
	}
	u, err := procmem.Read()
	if errors.Is(err, procmem.ErrUnavailable) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return u.Resident
}
