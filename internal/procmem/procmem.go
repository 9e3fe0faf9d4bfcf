package procmem

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// ErrUnavailable is returned where the process's memory cannot be read
// (no /proc).
var ErrUnavailable = errors.New("procmem: resident memory is read from /proc/self/statm, which this system lacks")

// Usage is a process's resident memory, in bytes.
type Usage struct {
	Resident  int64 // every resident page
	Anonymous int64 // those not backed by a file: heaps and stacks
}

// Read returns this process's resident memory, from /proc/self/statm.
func Read() (Usage, error) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return Usage{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	f := bytes.Fields(b)
	if len(f) < 3 {
		return Usage{}, fmt.Errorf("procmem: /proc/self/statm reads %q", b)
	}
	rss, err1 := strconv.ParseInt(string(f[1]), 10, 64)
	shared, err2 := strconv.ParseInt(string(f[2]), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return Usage{}, fmt.Errorf("procmem: /proc/self/statm reads %q: %w", b, err)
	}
	page := int64(os.Getpagesize())
	return Usage{Resident: rss * page, Anonymous: (rss - shared) * page}, nil
}
