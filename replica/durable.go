package replica

import (
	"fmt"
)

// What must be fsynced, and when.
//
// The store is opened with SyncWrites off: a commit is written to Badger's
// logs but not fsynced. A commit that must survive a power loss then
// calls durable, which fsyncs what every commit before it wrote (see
// badgerdir.Syncer). Such commits are the app's own writes (Update,
// Import), profiles and the store's creation: they exist nowhere else.
// Changes applied from the relay, the cursors that say how far they go,
// and the bookkeeping of what the relay acknowledged are not fsynced on
// their own: lost in a crash, they are sent again (a cursor is lost with
// the changes it covers, as they are committed together) or pushed again,
// which the relay ignores as already held. The next durable commit, or
// Close, makes them durable too. A process crash loses nothing unsynced:
// the kernel still has it. The syncer fsyncs the active logs through
// files of its own on Linux, so a live session's bookkeeping and its next
// push do not wait for a local edit's fsync.
//
// What is left: across a rotation of Badger's logs, a later applied
// message could survive a power cut without an earlier one it builds on
// (see badgerdir.Syncer). Closing that needs Badger to fsync a log as it
// rotates it away.

// durable makes every commit before it durable. It returns err unchanged
// if it is not nil (the commit failed: nothing to sync).
func (r *Replica) durable(err error) error {
	if err != nil {
		return err
	}
	if err := r.fsync.Sync(); err != nil {
		return fmt.Errorf("ferry: commit written but not fsynced: %w", err)
	}
	return nil
}
