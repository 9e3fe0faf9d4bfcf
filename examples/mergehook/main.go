// Mergehook resolves a conflict with the app's own rule. A warehouse and a
// shop both change a product's stock count while offline; a merge hook
// settles the conflict by adding up both changes (local + remote - base),
// so no delivery and no sale is lost. Both devices end with the same count.
//
// Start the relay in the repository's root, then run the example there:
//
//	go run ./cmd/ferry relay --dev
//	go run ./examples/mergehook
//
// (For a count that only ever moves by increments, a crdt.Counter field
// adds concurrent changes up by itself, with no hook. A hook is for rules
// the CRDT cannot know: a plain number, a minimum, a field that depends on
// others.)
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/ferrysync/ferry/crdt"
	"github.com/ferrysync/ferry/examples/internal/devrelay"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/replica"
)

// Item is a record of the inventory collection. Qty is a plain number:
// two devices writing it concurrently is a conflict, for the policy.
type Item struct {
	Name string `ferry:"name"`
	Qty  int    `ferry:"qty"`
}

const (
	collection = "inventory"
	profile    = "relay"
)

func main() { devrelay.Main("mergehook", run) }

func run(ctx context.Context, args []string, stdout io.Writer) error {
	creds, dir, done, err := devrelay.Setup("mergehook", args, stdout)
	if err != nil {
		return err
	}
	defer done()
	fmt.Fprintf(stdout, "Two devices change the same stock count offline; a merge hook adds up their changes (relay %s).\n", creds.URL)

	warehouse, err := openDevice("warehouse", filepath.Join(dir, "warehouse"), creds, stdout)
	if err != nil {
		return err
	}
	defer warehouse.r.Close()
	shop, err := openDevice("shop", filepath.Join(dir, "shop"), creds, stdout)
	if err != nil {
		return err
	}
	defer shop.r.Close()

	id, err := warehouse.items.Insert(Item{Name: "Green tea", Qty: 20})
	if err != nil {
		return err
	}
	if err := warehouse.sync(ctx); err != nil {
		return fmt.Errorf("%w\n(is the relay running? start it with `go run ./cmd/ferry relay --dev`)", err)
	}
	warehouse.say("adds Green tea, 20 in stock, and syncs")
	if err := shop.sync(ctx); err != nil {
		return err
	}
	shop.say("syncs: %s", shop.stock(id))

	fmt.Fprintf(stdout, "%-10s both go offline\n", "")
	if err := warehouse.addStock(id, +5); err != nil {
		return err
	}
	warehouse.say("takes a delivery of 5: %s", warehouse.stock(id))
	if err := shop.addStock(id, -3); err != nil {
		return err
	}
	shop.say("sells 3: %s", shop.stock(id))

	if err := warehouse.sync(ctx); err != nil {
		return err
	}
	warehouse.say("syncs first: the relay takes its count, no conflict")
	shop.say("syncs second and finds both changed qty; its merge hook runs:")
	if err := shop.sync(ctx); err != nil {
		return err
	}
	if err := warehouse.sync(ctx); err != nil {
		return err
	}
	warehouse.say("syncs again")
	fmt.Fprintf(stdout, "%-10s warehouse: %s; shop: %s\n", "now", warehouse.stock(id), shop.stock(id))
	return nil
}

// device is one replica with its inventory collection.
type device struct {
	name  string
	r     *replica.Replica
	items *replica.Collection
	out   io.Writer
}

func openDevice(name, dir string, creds devrelay.Credentials, out io.Writer) (*device, error) {
	d := &device{name: name, out: out}
	// Every device sets the hook: whichever syncs second finds the
	// conflict. One hook serves every collection with the custom policy;
	// policy.PerCollection would route several.
	r, err := replica.Open(dir, &replica.Options{MergeHook: policy.ResolverFunc(d.resolve), TokenSource: creds.Tokens})
	if err != nil {
		return nil, err
	}
	d.r = r
	p := replica.Profile{
		Name:        profile,
		URL:         creds.URL,
		APIKey:      creds.APIKey,
		Mode:        policy.Manual,
		Type:        policy.TwoWay,
		Collections: []string{collection},
		// Prefer-local for any other collection; the hook decides here.
		Policy:             policy.PreferLocal,
		CollectionPolicies: map[string]policy.Policy{collection: policy.Custom},
		Timeout:            10 * time.Second,
	}
	err = r.AddProfile(p)
	if errors.Is(err, replica.ErrProfileExists) { // a --data folder used before
		err = r.UpdateProfile(p)
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	d.items = r.Collection(collection)
	return d, nil
}

// resolve is the merge hook. The sync engine calls it on the goroutine
// running the sync (here, the one calling Sync), one conflict at a time.
// Its decision is written as a change that follows both sides, so every
// device converges to it.
func (d *device) resolve(c *policy.Conflict) (policy.Decision, error) {
	if c.IsDelete() || c.Path.String() != "qty" || !c.BaseSet || !c.LocalSet || !c.RemoteSet {
		// Not a count that both sides changed: this device's value wins.
		return policy.LocalWins.Resolve(c)
	}
	// Values arrive as a record holds them (a Go int as int64);
	// crdt.DecodeValue converts them as Collection.Get would.
	var base, local, remote int
	for _, v := range []struct {
		from any
		to   *int
	}{{c.Base, &base}, {c.Local, &local}, {c.Remote, &remote}} {
		if err := crdt.DecodeValue(v.from, v.to); err != nil {
			return policy.Decision{}, fmt.Errorf("qty of %s: %w", c.Record, err)
		}
	}
	sum := local + remote - base
	fmt.Fprintf(d.out, "%-10s   record   %s/%s (%v)\n", "", c.Collection, c.Record, c.LocalRecord["name"])
	fmt.Fprintf(d.out, "%-10s   base     %d  (the count both last shared)\n", "", base)
	fmt.Fprintf(d.out, "%-10s   local    %d  (the %s's)\n", "", local, d.name)
	fmt.Fprintf(d.out, "%-10s   remote   %d  (the relay's)\n", "", remote)
	fmt.Fprintf(d.out, "%-10s   decision %d + %d - %d = %d\n", "", local, remote, base, sum)
	return policy.Keep(sum), nil
}

func (d *device) say(format string, a ...any) {
	fmt.Fprintf(d.out, "%-10s %s\n", d.name, fmt.Sprintf(format, a...))
}

func (d *device) sync(ctx context.Context) error {
	st, err := d.r.Sync(ctx, profile)
	if err != nil {
		return fmt.Errorf("%s: sync: %w", d.name, err)
	}
	for _, cs := range st.Collections {
		if len(cs.Failed) > 0 {
			return fmt.Errorf("%s: records failed to sync: %v", d.name, cs.Failed)
		}
	}
	return nil
}

// stock reads the item's count, as "N in stock".
func (d *device) stock(id string) string {
	var it Item
	if err := d.items.Get(id, &it); err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%d in stock", it.Qty)
}

// addStock changes the count by delta, as the app would after a delivery
// or a sale: it writes the new number (a plain field, not a counter).
func (d *device) addStock(id string, delta int) error {
	var it Item
	if err := d.items.Get(id, &it); err != nil {
		return err
	}
	it.Qty += delta
	return d.items.Put(id, it)
}
