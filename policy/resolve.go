package policy

import (
	"errors"
	"fmt"
	"maps"

	"github.com/ferrysync/ferry/crdt"
)

// Conflict is one field that both sides changed since they last shared a
// version, to different values, or (Path nil) a record deleted on one side
// and changed on the other.
type Conflict struct {
	Collection string
	Record     string
	// Path is the field (map keys, outermost first); nil for a delete
	// conflict, where Base, Local and Remote are whole records.
	Path crdt.Path

	// Base is the value both sides last shared; Local this device's;
	// Remote the relay's. The *Set flags tell an absent field (never
	// written, or deleted) from a field holding nil.
	Base, Local, Remote          any
	BaseSet, LocalSet, RemoteSet bool

	// LocalRecord and RemoteRecord are the whole records as each side has
	// them (nil when that side deleted the record), for hooks that decide
	// one field by looking at others.
	LocalRecord, RemoteRecord map[string]any
}

// IsDelete reports whether this is a delete racing an edit.
func (c *Conflict) IsDelete() bool { return c.Path == nil }

// Decision is a resolver's answer for one conflict: a value to write, or a
// delete (of the field, or for a delete conflict, of the record).
type Decision struct {
	Value  any
	Delete bool
}

// Keep decides for value v.
func Keep(v any) Decision { return Decision{Value: v} }

// Remove decides to delete the field (or, for a delete conflict, the
// record).
func Remove() Decision { return Decision{Delete: true} }

// local and remote are the decisions that side's state stands for.
func (c *Conflict) local() Decision {
	if !c.LocalSet {
		return Remove()
	}
	return Keep(c.Local)
}

func (c *Conflict) remote() Decision {
	if !c.RemoteSet {
		return Remove()
	}
	return Keep(c.Remote)
}

// Resolver decides conflicts. The sync engine calls Resolve from the
// goroutine running the sync, one conflict at a time; calls for one
// collection never overlap, but two syncs of different collections may
// call it at once, so a resolver shared by collections must be safe for
// concurrent use. It may block (it holds up that sync, and the
// collection's lease, while it does), and no lock of the replica is held:
// it may read the replica. An error fails the record: it stays pending,
// with its local changes, and is reported as failed; the rest of the
// collection syncs.
type Resolver interface {
	Resolve(c *Conflict) (Decision, error)
}

// ResolverFunc adapts a function to a Resolver. The function is called as
// [Resolver] says: from a sync's goroutine, and from several at once when
// collections sync concurrently.
type ResolverFunc func(c *Conflict) (Decision, error)

// Resolve calls f.
func (f ResolverFunc) Resolve(c *Conflict) (Decision, error) { return f(c) }

// Policy names a conflict policy, for storing in a sync profile.
type Policy string

const (
	// PreferLocal keeps this device's value: the syncing device's value
	// ends up everywhere.
	PreferLocal Policy = "prefer-local"
	// PreferCloud keeps the relay's value.
	PreferCloud Policy = "prefer-cloud"
	// Custom asks the app's merge hook.
	Custom Policy = "custom"
)

// ErrNoHook means a profile asks for Custom resolution and no hook is set.
var ErrNoHook = errors.New("policy: custom resolution needs a merge hook")

// Resolver returns the resolver for p; hook is used for Custom.
func (p Policy) Resolver(hook Resolver) (Resolver, error) {
	switch p {
	case PreferLocal, "":
		return preferLocal{}, nil
	case PreferCloud:
		return preferCloud{}, nil
	case Custom:
		if hook == nil {
			return nil, ErrNoHook
		}
		return hook, nil
	}
	return nil, fmt.Errorf("policy: unknown conflict policy %q", p)
}

// Validate reports whether p names a policy.
func (p Policy) Validate() error {
	switch p {
	case PreferLocal, PreferCloud, Custom, "":
		return nil
	}
	return fmt.Errorf("policy: unknown conflict policy %q", p)
}

type preferLocal struct{}

func (preferLocal) Resolve(c *Conflict) (Decision, error) { return c.local(), nil }

type preferCloud struct{}

func (preferCloud) Resolve(c *Conflict) (Decision, error) { return c.remote(), nil }

// LocalWins and CloudWins are the built-in resolvers. They hold no state
// and are safe for concurrent use.
var (
	LocalWins Resolver = preferLocal{}
	CloudWins Resolver = preferCloud{}
)

// Builtin reports whether r is one of the built-in resolvers (LocalWins,
// CloudWins, or what PreferLocal and PreferCloud give). They decide from
// the conflict alone: they read nothing, never block and never fail, so
// the sync engine may ask them while it holds the record's lock and
// decide a record's conflicts in the same store transaction as its
// merge. A merge hook is never asked that way.
func Builtin(r Resolver) bool {
	switch r.(type) {
	case preferLocal, preferCloud:
		return true
	}
	return false
}

// PerCollection is a Resolver that hands each conflict to the resolver of
// its collection in byCollection, or else to fallback. With no resolver for
// the collection and a nil fallback, the conflict fails with ErrNoHook.
// Use it as the replica's one merge hook when collections decide their
// conflicts differently. It is safe for concurrent use when its resolvers
// are. It keeps a copy of byCollection, so the caller may change the map
// afterwards.
func PerCollection(byCollection map[string]Resolver, fallback Resolver) Resolver {
	byCollection = maps.Clone(byCollection)
	return ResolverFunc(func(c *Conflict) (Decision, error) {
		if r := byCollection[c.Collection]; r != nil {
			return r.Resolve(c)
		}
		if fallback != nil {
			return fallback.Resolve(c)
		}
		return Decision{}, fmt.Errorf("%w for collection %q", ErrNoHook, c.Collection)
	})
}
