package replica

import (
	"bytes"
	"encoding/json"
	"errors"

	"github.com/dgraph-io/badger/v4"
)

// syncState is what a profile remembers per collection between syncs.
type syncState struct {
	Cursor      uint64 `json:"cursor"`      // relay log position applied up to
	Incarnation string `json:"incarnation"` // the relay store's identity at that cursor
	// Rewound says the next sync pulls from the start of the log,
	// wherever a live session has moved Cursor since (see rewindOthers).
	Rewound bool `json:"rewound,omitempty"`
}

func syncStatePrefix(profile string) []byte {
	return append(append([]byte("y/"), profile...), 0)
}

func syncStateKey(profile, coll string) []byte {
	return append(syncStatePrefix(profile), coll...)
}

func (r *Replica) loadSyncState(profile, coll string) (syncState, error) {
	var s syncState
	err := r.view(func(txn *badger.Txn) (err error) {
		s, err = readSyncState(txn, profile, coll)
		return err
	})
	return s, err
}

// saveSyncState stores a profile's state for a collection. It is not
// fsynced: a cursor lost in a crash only makes the next sync pull again
// what it covered (see durable.go).
func (r *Replica) saveSyncState(profile, coll string, s syncState) error {
	return r.update(func(txn *badger.Txn) error { return writeSyncState(txn, profile, coll, s) })
}

func readSyncState(txn *badger.Txn, profile, coll string) (syncState, error) {
	var s syncState
	item, err := txn.Get(syncStateKey(profile, coll))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	err = item.Value(func(v []byte) error { return json.Unmarshal(v, &s) })
	return s, err
}

func writeSyncState(txn *badger.Txn, profile, coll string, s syncState) error {
	b, _ := json.Marshal(s)
	return txn.Set(syncStateKey(profile, coll), b)
}

// advanceCursor moves a profile's cursor for a collection to next, in
// txn, unless it is there already.
func advanceCursor(txn *badger.Txn, profile, coll string, next uint64) error {
	s, err := readSyncState(txn, profile, coll)
	if err != nil || next <= s.Cursor {
		return err
	}
	s.Cursor = next
	return writeSyncState(txn, profile, coll, s)
}

// rewindOthers sets back to 0 the cursor of every profile but profile for
// coll. A refresh from one relay discards the changes that relay lacks,
// and another relay's log may hold some of them before a profile's
// cursor: this device's own pushes, which a sync does not pull back (see
// collSync.ownEntries), or changes it pulled. Pulling those logs again
// from the start brings them back. A live session of such a profile may
// move the cursor on before then (advanceCursor keeps Rewound): the
// profile's next sync, the live session's catch-up included, pulls from
// the start all the same, and clears Rewound.
func (r *Replica) rewindOthers(profile, coll string) error {
	return r.update(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("y/")})
		defer it.Close()
		type rewind struct {
			profile string
			s       syncState
		}
		var todo []rewind
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			name, c, ok := bytes.Cut(k[len("y/"):], []byte{0})
			if !ok || string(c) != coll || string(name) == profile {
				continue
			}
			var s syncState
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &s) }); err != nil {
				return err
			}
			if s.Cursor != 0 || !s.Rewound {
				s.Cursor, s.Rewound = 0, true
				todo = append(todo, rewind{string(name), s})
			}
		}
		for _, w := range todo {
			if err := writeSyncState(txn, w.profile, coll, w.s); err != nil {
				return err
			}
		}
		return nil
	})
}
