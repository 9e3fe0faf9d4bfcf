//go:build !unix

package badgerdir

import "os"

// allocated is the file size where the allocation is unknown.
func allocated(info os.FileInfo) int64 { return info.Size() }
