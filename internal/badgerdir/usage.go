package badgerdir

import (
	"os"
)

// DiskUsage returns the bytes the files in dir (not its subfolders) take on
// disk. Badger creates its value log and memtable files at their full size
// (gigabytes) and fills them as it goes; the file system allocates only what
// was written, so the allocated size, not the file size, is what the store
// costs. Where the allocation is unknown, the file size is counted.
func DiskUsage(dir string) (int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if os.IsNotExist(err) {
			continue // removed since ReadDir, by compaction or GC
		}
		if err != nil {
			return 0, err
		}
		total += allocated(info)
	}
	return total, nil
}
