package replica

import (
	"encoding/json"
	"errors"

	"github.com/dgraph-io/badger/v4"
)

// syncState is what a profile remembers per collection between syncs.
type syncState struct {
	Cursor      uint64 `json:"cursor"`      // relay log position applied up to
	Incarnation string `json:"incarnation"` // the relay store's identity at that cursor
}

func syncStatePrefix(profile string) []byte {
	return append(append([]byte("y/"), profile...), 0)
}

func syncStateKey(profile, coll string) []byte {
	return append(syncStatePrefix(profile), coll...)
}

func (r *Replica) loadSyncState(profile, coll string) (syncState, error) {
	var s syncState
	err := r.view(func(txn *badger.Txn) error {
		item, err := txn.Get(syncStateKey(profile, coll))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return json.Unmarshal(v, &s) })
	})
	return s, err
}

func (r *Replica) saveSyncState(profile, coll string, s syncState) error {
	b, _ := json.Marshal(s)
	return r.update(func(txn *badger.Txn) error { return txn.Set(syncStateKey(profile, coll), b) })
}
