package policy

import (
	"errors"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

func TestBuiltInPolicies(t *testing.T) {
	field := &Conflict{Path: crdt.Path{"price"}, Base: 1.0, Local: 2.0, Remote: 3.0, BaseSet: true, LocalSet: true, RemoteSet: true}
	deletedHere := &Conflict{Path: crdt.Path{"price"}, Base: 1.0, Remote: 3.0, BaseSet: true, RemoteSet: true}
	recordDeletedThere := &Conflict{Base: map[string]any{"a": 1}, Local: map[string]any{"a": 2}, BaseSet: true, LocalSet: true}

	for _, tc := range []struct {
		p    Policy
		c    *Conflict
		want Decision
	}{
		{PreferLocal, field, Keep(2.0)},
		{PreferCloud, field, Keep(3.0)},
		{PreferLocal, deletedHere, Remove()},
		{PreferCloud, deletedHere, Keep(3.0)},
		{PreferLocal, recordDeletedThere, Keep(map[string]any{"a": 2})},
		{PreferCloud, recordDeletedThere, Remove()},
	} {
		r, err := tc.p.Resolver(nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.Resolve(tc.c)
		if err != nil || got.Delete != tc.want.Delete || !crdt.Equal(got.Value, tc.want.Value) {
			t.Errorf("%s on %+v = %+v, %v; want %+v", tc.p, tc.c, got, err, tc.want)
		}
	}
}

func TestCustomNeedsHook(t *testing.T) {
	if _, err := Custom.Resolver(nil); !errors.Is(err, ErrNoHook) {
		t.Fatalf("Custom without hook: %v", err)
	}
	sum := ResolverFunc(func(c *Conflict) (Decision, error) {
		return Keep(c.Local.(int64) + c.Remote.(int64) - c.Base.(int64)), nil
	})
	r, _ := Custom.Resolver(sum)
	d, _ := r.Resolve(&Conflict{Path: crdt.Path{"qty"}, Base: int64(10), Local: int64(12), Remote: int64(15)})
	if d.Value != int64(17) {
		t.Fatalf("hook decided %v", d.Value)
	}
	if err := Policy("coin-toss").Validate(); err == nil {
		t.Fatal("unknown policy accepted")
	}
}

func TestTypesAndNetworks(t *testing.T) {
	for _, tc := range []struct {
		t                     Type
		pulls, pushes, leased bool
	}{
		{TwoWay, true, true, true},
		{Slow, true, true, true},
		{OneWayFromClient, false, true, false},
		{OneWayFromServer, true, false, false},
		{RefreshFromServer, true, false, false},
		{RefreshFromClient, true, true, true},
	} {
		if tc.t.Pulls() != tc.pulls || tc.t.Pushes() != tc.pushes || tc.t.Leased() != tc.leased {
			t.Errorf("%s: pulls %v pushes %v leased %v", tc.t, tc.t.Pulls(), tc.t.Pushes(), tc.t.Leased())
		}
		if err := tc.t.Validate(); err != nil {
			t.Error(err)
		}
	}
	if Type("sideways").Validate() == nil || Mode("sometimes").Validate() == nil {
		t.Fatal("unknown type or mode accepted")
	}
	wifiOnly := Networks{WiFi}
	if !wifiOnly.Allows(WiFi) || wifiOnly.Allows(Cellular) || wifiOnly.Allows(None) {
		t.Fatal("wifi-only profile rules wrong")
	}
	if !(Networks{}).Allows(Cellular) || (Networks{}).Allows(None) {
		t.Fatal("any-network profile rules wrong")
	}
}

// TestPerCollectionKeepsItsOwnMap: the caller's map may change after
// PerCollection returns (a config reload, say) while syncs resolve
// conflicts; the resolver neither sees the change nor races with it.
func TestPerCollectionKeepsItsOwnMap(t *testing.T) {
	byColl := map[string]Resolver{"prices": CloudWins}
	r := PerCollection(byColl, nil)
	c := &Conflict{Collection: "prices", Path: crdt.Path{"amount"}, Local: 1.0, Remote: 2.0, LocalSet: true, RemoteSet: true}

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 100; i++ {
			byColl["prices"] = LocalWins
			delete(byColl, "prices")
		}
	}()
	for i := 0; i < 100; i++ {
		d, err := r.Resolve(c)
		if err != nil || d.Value != 2.0 {
			t.Fatalf("resolve: %+v, %v; want the relay's 2", d, err)
		}
	}
	<-done
}

// TestBuiltinTellsTheEngineWhichResolversAreItsOwn: only the built-in
// resolvers may be asked inside a store transaction; a hook (even one that
// only forwards to a built-in) never is.
func TestBuiltinTellsTheEngineWhichResolversAreItsOwn(t *testing.T) {
	for _, p := range []Policy{PreferLocal, PreferCloud, ""} {
		r, err := p.Resolver(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !Builtin(r) {
			t.Errorf("Builtin(%q's resolver) = false", p)
		}
	}
	hook := ResolverFunc(func(c *Conflict) (Decision, error) { return LocalWins.Resolve(c) })
	r, err := Custom.Resolver(hook)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []Resolver{r, PerCollection(map[string]Resolver{"c": LocalWins}, nil)} {
		if Builtin(r) {
			t.Errorf("Builtin(%T) = true for a resolver that is not built in", r)
		}
	}
}
