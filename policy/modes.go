package policy

import (
	"fmt"
	"slices"
)

// Mode says when a profile syncs.
type Mode string

const (
	// Manual syncs when the app calls Sync.
	Manual Mode = "manual"
	// Periodic syncs every interval while the replica is open.
	Periodic Mode = "periodic"
	// Live keeps a connection: local edits are pushed within milliseconds
	// and remote ones applied as they arrive.
	Live Mode = "live"
)

// Validate reports whether m names a mode.
func (m Mode) Validate() error {
	switch m {
	case Manual, Periodic, Live:
		return nil
	}
	return fmt.Errorf("policy: unknown sync mode %q", m)
}

// Type says what a sync moves. docs/conflicts.md gives each one's exact
// meaning.
type Type string

const (
	// TwoWay pulls the relay's changes, resolves conflicts, and pushes this
	// device's.
	TwoWay Type = "two-way"
	// Slow is TwoWay with cursors ignored: every record is compared by
	// heads. Used after the relay was restored from a backup.
	Slow Type = "slow"
	// OneWayFromClient only pushes.
	OneWayFromClient Type = "one-way-from-client"
	// OneWayFromServer only pulls.
	OneWayFromServer Type = "one-way-from-server"
	// RefreshFromServer replaces the device's collection with the relay's,
	// discarding local changes the relay lacks when it starts; writes made
	// while it runs are kept, merged with the relay's copy.
	RefreshFromServer Type = "refresh-from-server"
	// RefreshFromClient makes the relay's collection equal to the device's.
	RefreshFromClient Type = "refresh-from-client"
)

// Validate reports whether t names a type.
func (t Type) Validate() error {
	switch t {
	case TwoWay, Slow, OneWayFromClient, OneWayFromServer, RefreshFromServer, RefreshFromClient:
		return nil
	}
	return fmt.Errorf("policy: unknown sync type %q", t)
}

// Pulls reports whether the type reads the relay's changes.
func (t Type) Pulls() bool { return t != OneWayFromClient }

// Pushes reports whether the type sends this device's changes.
func (t Type) Pushes() bool { return t != OneWayFromServer && t != RefreshFromServer }

// Leased reports whether the type holds the collection's lease while it
// syncs: it pushes, and what it pushes may include conflict resolutions,
// which are only safe under a fence (see docs/conflicts.md).
func (t Type) Leased() bool { return t == TwoWay || t == Slow || t == RefreshFromClient }

// Network is a kind of connection the device has, as the platform's
// reachability API reports it.
type Network string

const (
	None     Network = "none"
	WiFi     Network = "wifi"
	Cellular Network = "cellular"
	Ethernet Network = "ethernet"
	Other    Network = "other"
)

// Networks lists where a profile may sync; empty means any network but
// None.
type Networks []Network

// Allows reports whether a sync may run on n.
func (ns Networks) Allows(n Network) bool {
	if n == None || n == "" {
		return false
	}
	return len(ns) == 0 || slices.Contains(ns, n)
}
