package replica

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/ferrysync/ferry/policy"
)

// Profile is a named, stored sync configuration: where to sync, what, how
// and when. Profiles are counted against Options.MaxProfiles. A profile
// holds no secret: its access tokens come from Options.TokenSource at each
// connection, and are never stored.
type Profile struct {
	Name string `json:"name"`
	URL  string `json:"url"` // the relay, ws://host:port/ws or wss://...
	// APIKey names the app to the relay. It is stored with the profile: it
	// identifies the app (every device of the app has the same one), and
	// grants nothing without a token.
	APIKey string `json:"api_key"`

	Mode     policy.Mode   `json:"mode"`               // manual, periodic, live
	Type     policy.Type   `json:"type"`               // two-way, slow, one-way-..., refresh-...
	Interval time.Duration `json:"interval,omitempty"` // for periodic

	Collections []string `json:"collections"` // the collections this profile syncs

	// Policy resolves conflicts; CollectionPolicies overrides it per
	// collection. Empty means the replica's Options.Policy, then
	// prefer-local.
	Policy             policy.Policy            `json:"policy,omitempty"`
	CollectionPolicies map[string]policy.Policy `json:"collection_policies,omitempty"`

	// Networks the profile may sync on; empty means any but none.
	Networks policy.Networks `json:"networks,omitempty"`

	// Timeout bounds waiting for a collection's lease, and each request to
	// the relay (the sync timeout). Default 30 s.
	Timeout time.Duration `json:"timeout,omitempty"`

	// LeaseTTL is how long a lease lives unless renewed: a sync renews it
	// at half the lifetime the relay grants (a relay may grant less), and
	// if this device vanishes mid-sync, other devices wait at most this
	// long for the collection. Default 30 s.
	LeaseTTL time.Duration `json:"lease_ttl,omitempty"`
}

const (
	defaultSyncTimeout = 30 * time.Second
	defaultLeaseTTL    = 30 * time.Second
)

func (p *Profile) leaseTTL() time.Duration {
	if p.LeaseTTL > 0 {
		return p.LeaseTTL
	}
	return defaultLeaseTTL
}

func (p *Profile) timeout() time.Duration {
	if p.Timeout > 0 {
		return p.Timeout
	}
	return defaultSyncTimeout
}

// policyFor returns the conflict policy for a collection.
func (p *Profile) policyFor(coll string, def policy.Policy) policy.Policy {
	if cp, ok := p.CollectionPolicies[coll]; ok && cp != "" {
		return cp
	}
	if p.Policy != "" {
		return p.Policy
	}
	if def != "" {
		return def
	}
	return policy.PreferLocal
}

// Validate reports what is wrong with the profile, if anything.
func (p *Profile) Validate() error {
	var errs []error
	if err := ValidateCollection(p.Name); err != nil {
		errs = append(errs, fmt.Errorf("name: %w", err))
	}
	if !strings.HasPrefix(p.URL, "ws://") && !strings.HasPrefix(p.URL, "wss://") {
		errs = append(errs, fmt.Errorf("url %q: want ws:// or wss://", p.URL))
	}
	if p.APIKey == "" {
		errs = append(errs, errors.New("api_key is required"))
	}
	if err := p.Mode.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := p.Type.Validate(); err != nil {
		errs = append(errs, err)
	}
	if p.Mode == policy.Periodic && p.Interval <= 0 {
		errs = append(errs, errors.New("a periodic profile needs an interval"))
	}
	if len(p.Collections) == 0 {
		errs = append(errs, errors.New("no collections to sync"))
	}
	for _, c := range p.Collections {
		if err := ValidateCollection(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.Policy.Validate(); err != nil {
		errs = append(errs, err)
	}
	for c, cp := range p.CollectionPolicies {
		if err := cp.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("collection %s: %w", c, err))
		}
	}
	for _, n := range p.Networks {
		switch n {
		case policy.WiFi, policy.Cellular, policy.Ethernet, policy.Other:
		default:
			errs = append(errs, fmt.Errorf("network %q: want wifi, cellular, ethernet or other", n))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: profile %q: %w", ErrInvalidProfile, p.Name, err)
	}
	return nil
}

func profileKey(name string) []byte { return append([]byte("f/"), name...) }

// AddProfile stores a new profile. ErrProfileExists if the name is taken,
// ErrTooManyProfiles past Options.MaxProfiles, ErrInvalidProfile if its
// settings are wrong or a collection it syncs under the custom policy has
// no merge hook. A periodic or live profile starts syncing at once.
func (r *Replica) AddProfile(p Profile) error {
	return r.putProfile(p, false)
}

// UpdateProfile replaces a stored profile (ErrNoProfile if absent). A
// running periodic or live sync restarts with the new settings.
func (r *Replica) UpdateProfile(p Profile) error {
	return r.putProfile(p, true)
}

func (r *Replica) putProfile(p Profile, update bool) error {
	if err := p.Validate(); err != nil {
		return err
	}
	// A collection under the custom policy with no merge hook would fail
	// every sync: refuse the profile now.
	for _, coll := range p.Collections {
		if _, err := r.resolver(&p, coll); err != nil {
			return fmt.Errorf("%w: profile %q, collection %s: %w (set Options.MergeHook)", ErrInvalidProfile, p.Name, coll, err)
		}
	}
	release, err := r.enter()
	if err != nil {
		return err
	}
	defer release()
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	err = r.db.Update(func(txn *badger.Txn) error {
		_, err := txn.Get(profileKey(p.Name))
		exists := err == nil
		switch {
		case err != nil && !errors.Is(err, badger.ErrKeyNotFound):
			return err
		case update && !exists:
			return fmt.Errorf("%w: %q", ErrNoProfile, p.Name)
		case !update && exists:
			return fmt.Errorf("%w: %q", ErrProfileExists, p.Name)
		}
		if !update {
			n, err := countPrefix(txn, []byte("f/"))
			if err != nil {
				return err
			}
			if n >= r.opts.MaxProfiles {
				return fmt.Errorf("%w: %d of %d", ErrTooManyProfiles, n, r.opts.MaxProfiles)
			}
		}
		return txn.Set(profileKey(p.Name), b)
	})
	err = r.durable(err)
	if err != nil {
		return err
	}
	r.sched.restart(p)
	return nil
}

// RemoveProfile deletes a profile, its cursors and statistics, and stops
// its background sync. Records and their pending changes stay.
func (r *Replica) RemoveProfile(name string) error {
	release, err := r.enter()
	if err != nil {
		return err
	}
	defer release()
	err = r.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get(profileKey(name)); errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("%w: %q", ErrNoProfile, name)
		} else if err != nil {
			return err
		}
		for _, prefix := range [][]byte{syncStatePrefix(name), statsKey(name), profileKey(name)} {
			if err := deletePrefix(txn, prefix); err != nil {
				return err
			}
		}
		return nil
	})
	err = r.durable(err)
	if err != nil {
		return err
	}
	r.sched.stop(name)
	r.forgetStatus(name)
	return nil
}

// Profile returns the stored profile.
func (r *Replica) Profile(name string) (Profile, error) {
	var p Profile
	release, err := r.enter()
	if err != nil {
		return p, err
	}
	defer release()
	err = r.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(profileKey(name))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("%w: %q", ErrNoProfile, name)
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return json.Unmarshal(v, &p) })
	})
	return p, err
}

// Profiles lists the stored profiles in name order.
func (r *Replica) Profiles() ([]Profile, error) {
	release, err := r.enter()
	if err != nil {
		return nil, err
	}
	defer release()
	var out []Profile
	err = r.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("f/"), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var p Profile
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &p) }); err != nil {
				return err
			}
			out = append(out, p)
		}
		return nil
	})
	return out, err
}

// MaxProfiles returns how many profiles the replica may hold.
func (r *Replica) MaxProfiles() int { return r.opts.MaxProfiles }

func countPrefix(txn *badger.Txn, prefix []byte) (int, error) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	n := 0
	for it.Rewind(); it.Valid(); it.Next() {
		n++
	}
	return n, nil
}

func deletePrefix(txn *badger.Txn, prefix []byte) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	var keys [][]byte
	for it.Rewind(); it.Valid(); it.Next() {
		keys = append(keys, it.Item().KeyCopy(nil))
	}
	it.Close()
	for _, k := range keys {
		if err := txn.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
