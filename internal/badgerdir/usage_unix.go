//go:build unix

package badgerdir

import (
	"os"
	"syscall"
)

// allocated is the file's allocated size: st_blocks counts 512-byte units
// on every Unix, whatever the file system's block size.
func allocated(info os.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return int64(st.Blocks) * 512
	}
	return info.Size()
}
