package badgerstore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/relay"
)

// A format-1 store of 1,000 documents of 20 KB did not fit the migration's
// transactions of 1,000 documents (Badger's limit is about 10 MB), so the
// store failed to open with "Txn is too big", at every start. It migrates
// now, every document becoming its record's snapshot. Should the bytes
// bound miss Badger's limit, a batch Badger refuses is halved.
func TestBadgerMigratesLargeFormat1Store(t *testing.T) {
	t.Run("by bytes", testMigrateLarge)
	t.Run("halving", func(t *testing.T) {
		defer func(b int) { migrateBatchBytes = b }(migrateBatchBytes)
		migrateBatchBytes = 1 << 40
		testMigrateLarge(t)
	})
}

func testMigrateLarge(t *testing.T) {
	dir := t.TempDir()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	c := relay.Coll{Tenant: "shop", Collection: "c"}
	rng := rand.New(rand.NewChaCha8([32]byte{5}))
	const n, size = 1000, 20 << 10
	docs := map[string][]byte{}
	wb := db.NewWriteBatch()
	for _, kv := range [][2][]byte{
		{keyFormat, binary.BigEndian.AppendUint32(nil, 1)},
		{keyIncarnation, []byte("format-1-store")},
		{collKey("head", c), binary.BigEndian.AppendUint64(nil, n)},
	} {
		if err := wb.Set(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		id := fmt.Sprintf("r%04d", i)
		doc := make([]byte, size)
		for j := range doc {
			doc[j] = byte(rng.Uint32())
		}
		docs[id] = doc
		heads := crdt.Heads{crdt.Hash(sha256.Sum256(doc))}
		v := binary.AppendUvarint([]byte{valueVersion}, uint64(i+1))
		v = binary.AppendUvarint(v, uint64(len(heads.Bytes())))
		v = append(append(v, heads.Bytes()...), doc...)
		if err := wb.Set(recKey("doc", c, id), v); err != nil {
			t.Fatal(err)
		}
	}
	if err := wb.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s := bsOpen(t, dir, &Options{Relaxed: true, GCInterval: -1})
	if s.Incarnation() != "format-1-store" {
		t.Errorf("incarnation %q after migrating", s.Incarnation())
	}
	ctx := context.Background()
	for id, doc := range docs {
		rec, err := s.Record(ctx, c, id)
		if err != nil {
			t.Fatalf("Record(%s): %v", id, err)
		}
		if string(rec.Snapshot) != string(doc) || len(rec.Tail) != 0 || !rec.Heads.Equal(crdt.Heads{crdt.Hash(sha256.Sum256(doc))}) {
			t.Fatalf("Record(%s) after migrating: %d bytes of snapshot, %d of tail", id, len(rec.Snapshot), len(rec.Tail))
		}
	}
	u, err := s.Usage(ctx, "shop")
	if err != nil || u.Records != n || u.Bytes != n*size {
		t.Fatalf("usage after migrating: %+v, %v; want %d records of %d bytes", u, err, n, n*size)
	}
}
