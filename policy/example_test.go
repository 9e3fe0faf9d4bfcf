package policy_test

import (
	"errors"
	"fmt"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/policy"
)

// A merge hook decides each conflicting field. This one adds up two stock
// edits made offline and keeps this device's value for anything else.
func ExampleResolverFunc() {
	hook := policy.ResolverFunc(func(c *policy.Conflict) (policy.Decision, error) {
		if c.IsDelete() {
			return policy.Remove(), nil // a delete wins over an edit
		}
		if c.Path.String() == "stock" {
			var base, local, remote int64
			if err := errors.Join(crdt.DecodeValue(c.Base, &base),
				crdt.DecodeValue(c.Local, &local), crdt.DecodeValue(c.Remote, &remote)); err != nil {
				return policy.Decision{}, err // the record stays pending
			}
			return policy.Keep(local + remote - base), nil
		}
		return policy.LocalWins.Resolve(c)
	})

	stock := &policy.Conflict{Collection: "products", Record: "lamp", Path: crdt.Path{"stock"},
		Base: int64(20), Local: int64(17), Remote: int64(25), BaseSet: true, LocalSet: true, RemoteSet: true}
	name := &policy.Conflict{Collection: "products", Record: "lamp", Path: crdt.Path{"name"},
		Base: "lamp", Local: "desk lamp", Remote: "lamp (blue)", BaseSet: true, LocalSet: true, RemoteSet: true}
	for _, c := range []*policy.Conflict{stock, name} {
		d, err := hook.Resolve(c)
		fmt.Println(c.Path, d.Value, d.Delete, err)
	}
	// Output:
	// stock 22 false <nil>
	// name desk lamp false <nil>
}

// PerCollection gives each collection its own rule under the replica's one
// merge hook. A collection with no rule and no fallback fails its
// conflicts with ErrNoHook: the records stay pending rather than take a
// value nobody chose.
func ExamplePerCollection() {
	hook := policy.PerCollection(map[string]policy.Resolver{
		"prices": policy.CloudWins, // the head office sets prices
		"notes":  policy.LocalWins,
	}, nil)

	c := &policy.Conflict{Collection: "prices", Path: crdt.Path{"amount"},
		Local: 3.99, Remote: 4.90, LocalSet: true, RemoteSet: true}
	d, _ := hook.Resolve(c)
	fmt.Println("prices:", d.Value)

	// The remote side deleted the field: prefer-local keeps ours, and
	// prefer-cloud would delete it.
	c = &policy.Conflict{Collection: "notes", Path: crdt.Path{"text"}, Local: "call back", LocalSet: true}
	d, _ = hook.Resolve(c)
	fmt.Println("notes:", d.Value, d.Delete)
	d, _ = policy.CloudWins.Resolve(c)
	fmt.Println("notes, prefer-cloud:", d.Value, d.Delete)

	_, err := hook.Resolve(&policy.Conflict{Collection: "orders", Path: crdt.Path{"qty"}})
	fmt.Println(errors.Is(err, policy.ErrNoHook))
	// Output:
	// prices: 4.9
	// notes: call back false
	// notes, prefer-cloud: <nil> true
	// true
}

// A profile stores its conflict policy by name; Resolver turns the name into
// the rule, with the app's hook for Custom.
func ExamplePolicy_Resolver() {
	for _, p := range []policy.Policy{policy.PreferLocal, policy.PreferCloud, policy.Custom, "newest"} {
		_, err := p.Resolver(nil)
		fmt.Printf("%s: %v\n", p, err)
	}
	// Output:
	// prefer-local: <nil>
	// prefer-cloud: <nil>
	// custom: policy: custom resolution needs a merge hook
	// newest: policy: unknown conflict policy "newest"
}
