//go:build linux

package replica_test

import (
	"errors"
	"os"
	"syscall"
)

// dmgDataRanges lists the parts of f that hold data, skipping holes, so a
// test can copy or hash a preallocated 2 GiB value log quickly. Linux's
// lseek whence values for SEEK_DATA and SEEK_HOLE are 3 and 4.
func dmgDataRanges(f *os.File, size int64) ([][2]int64, error) {
	var out [][2]int64
	for off := int64(0); off < size; {
		start, err := f.Seek(off, 3)
		if errors.Is(err, syscall.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return nil, err
		}
		end, err := f.Seek(start, 4)
		if err != nil {
			return nil, err
		}
		out = append(out, [2]int64{start, end})
		off = end
	}
	return out, nil
}
