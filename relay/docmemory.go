package relay

import "github.com/ferrysync/ferry/crdt"

// docMemory estimates the memory a loaded document takes, by what it holds
// (crdt.Doc.Cost: its operations and changes, calibrated against the
// process's resident memory), never by its stored size, which may be
// hundreds of times smaller. A document whose history cannot be indexed
// falls back on its stored size times bytesPerStored, above what any
// record measured took per saved byte. The caller holds the record's
// lock: a Doc is not safe for concurrent use.
func docMemory(d *crdt.Doc, size int) int64 {
	if c, err := d.Cost(); err == nil {
		return c.Bytes
	}
	return 8<<10 + bytesPerStored*int64(size)
}

// bytesPerStored bounds the memory of a loaded document per byte of its
// saved form (see docs/operations.md, "Memory": 200 to 1,350 measured).
const bytesPerStored = 2048
