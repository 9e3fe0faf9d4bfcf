package replica

import (
	"encoding/binary"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/crdt"
)

// Quarantine (q/<coll>\0<id>): the relay's changes for a record whose merge
// hook failed, with the relay heads they lead to, kept for the next sync.
func writeQuarantine(txn *badger.Txn, coll, id string, data []byte, relay crdt.Heads) error {
	hb := relay.Bytes()
	v := binary.AppendUvarint(nil, uint64(len(hb)))
	v = append(append(v, hb...), data...)
	return txn.Set(recKey('q', coll, id), v)
}

func readQuarantine(txn *badger.Txn, coll, id string) ([]byte, crdt.Heads, error) {
	v, ok, err := getKey(txn, recKey('q', coll, id))
	if err != nil || !ok {
		return nil, nil, err
	}
	n, k := binary.Uvarint(v)
	if k <= 0 || uint64(len(v)-k) < n {
		return nil, nil, fmt.Errorf("ferry: quarantine of %s/%s is corrupt", coll, id)
	}
	h, err := crdt.HeadsFromBytes(v[k : k+int(n)])
	if err != nil {
		return nil, nil, err
	}
	return v[k+int(n):], h, nil
}
