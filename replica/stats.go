package replica

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/policy"
)

// Status is how a sync, or one collection of it, ended.
type Status string

const (
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"   // an error; see Err
	StatusStopped   Status = "stopped"  // cancelled by the app
	StatusDeferred  Status = "deferred" // not on an allowed network; runs when one appears
	StatusVetoed    Status = "vetoed"   // the delegate's ReadyForSync said no
	StatusSkipped   Status = "skipped"  // the delegate's BeforeCollection said no
)

// Counts are records changed in one direction.
type Counts struct {
	Added   int `json:"added"`
	Updated int `json:"updated"`
	Removed int `json:"removed"`
}

// CollectionStats describe one collection's part of a sync. The value
// Delegate.AfterCollection receives is the one SyncStats.Collections
// holds; the sync no longer changes it once that call is made.
type CollectionStats struct {
	Collection string      `json:"collection"`
	Type       policy.Type `json:"type"` // as run: slow when the relay's incarnation changed
	Status     Status      `json:"status"`
	Start      time.Time   `json:"start"`
	End        time.Time   `json:"end"`
	FromRelay  Counts      `json:"from_relay"`
	ToRelay    Counts      `json:"to_relay"`
	Conflicts  int         `json:"conflicts"` // fields and records resolved by the policy
	// Failed lists the records this sync could not complete: a merge hook
	// failed (the record stays pending, with the relay's changes kept for
	// the next sync), or the relay refused its changes.
	Failed []FailedRecord `json:"failed,omitempty"`
	Err    string         `json:"error,omitempty"`
}

// FailedRecord is a record a sync could not complete, and why.
type FailedRecord struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
	err    error
}

// Err returns why the record failed, for errors.Is (ErrMergeHook, say).
// Statistics read back with LastSync keep only Reason, and Err is nil.
func (f FailedRecord) Err() error { return f.err }

func failedRecord(id string, err error) FailedRecord {
	return FailedRecord{ID: id, Reason: err.Error(), err: err}
}

// SyncStats describe one sync of a profile: what each collection moved,
// and how it ended. Once a sync hands its statistics over (to the
// Listener, then to Sync's caller, who share one value) it no longer
// changes them; LastSync returns a copy of its own.
type SyncStats struct {
	Profile     string             `json:"profile"`
	Status      Status             `json:"status"`
	Start       time.Time          `json:"start"`
	End         time.Time          `json:"end"`
	Collections []*CollectionStats `json:"collections"`
	Err         string             `json:"error,omitempty"`
}

func statsKey(profile string) []byte { return append([]byte("z/"), profile...) }

func (r *Replica) saveStats(st *SyncStats) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return r.update(func(txn *badger.Txn) error { return txn.Set(statsKey(st.Profile), b) })
}

// LastSync returns the statistics of the profile's last sync that ran
// (deferred and vetoed attempts included): ErrNeverSynced if it has not
// synced yet, ErrNoProfile if there is no such profile.
func (r *Replica) LastSync(profile string) (*SyncStats, error) {
	release, err := r.enter()
	if err != nil {
		return nil, err
	}
	defer release()
	var st SyncStats
	err = r.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(statsKey(profile))
		if errors.Is(err, badger.ErrKeyNotFound) {
			if _, perr := txn.Get(profileKey(profile)); perr != nil {
				return fmt.Errorf("%w: %q", ErrNoProfile, profile)
			}
			return fmt.Errorf("%w: %q", ErrNeverSynced, profile)
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return json.Unmarshal(v, &st) })
	})
	if err != nil {
		return nil, err
	}
	return &st, nil
}
