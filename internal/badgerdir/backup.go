package badgerdir

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/dgraph-io/badger/v4/pb"
	"google.golang.org/protobuf/proto"
)

// ErrNotBackup means a stream is not in Badger's backup format, or is cut
// short.
var ErrNotBackup = errors.New("not a complete Badger backup")

// CheckBackup reads a stream in Badger's backup format (what DB.Backup
// writes: chunks, each a little-endian uint64 length and a protobuf list of
// entries) to its end without loading anything, and returns how many
// entries it holds. size is the stream's length: every chunk must fit in
// what remains and decode. DB.Load trusts each length it reads and panics
// on a wrong one, so check a file before loading it.
func CheckBackup(r io.Reader, size int64) (entries int, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var buf []byte
	var off int64
	for chunk := 0; ; chunk++ {
		var hdr [8]byte
		n, err := io.ReadFull(br, hdr[:])
		if err == io.EOF {
			return entries, nil
		}
		if err != nil {
			return entries, fmt.Errorf("%w: chunk %d at byte %d: %d of 8 length bytes", ErrNotBackup, chunk, off, n)
		}
		off += 8
		sz := binary.LittleEndian.Uint64(hdr[:])
		if sz > uint64(size-off) {
			return entries, fmt.Errorf("%w: chunk %d at byte %d claims %d bytes, %d remain", ErrNotBackup, chunk, off-8, sz, size-off)
		}
		if uint64(cap(buf)) < sz {
			buf = make([]byte, sz)
		}
		if _, err := io.ReadFull(br, buf[:sz]); err != nil {
			return entries, fmt.Errorf("%w: chunk %d at byte %d: %v", ErrNotBackup, chunk, off-8, err)
		}
		off += int64(sz)
		var list pb.KVList
		if err := proto.Unmarshal(buf[:sz], &list); err != nil {
			return entries, fmt.Errorf("%w: chunk %d at byte %d does not decode: %v", ErrNotBackup, chunk, off-8-int64(sz), err)
		}
		for _, kv := range list.GetKv() {
			if len(kv.GetKey()) == 0 {
				return entries, fmt.Errorf("%w: chunk %d holds an entry without a key", ErrNotBackup, chunk)
			}
		}
		entries += len(list.GetKv())
	}
}
