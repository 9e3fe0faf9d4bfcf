// Products is a product catalogue on two devices, a phone and a
// tablet. Both change the same product's price while offline, then sync in
// turn; the scenario runs once under prefer-local and once under
// prefer-cloud, to show which price wins everywhere under each. Then it
// lists a catalogue by category and price through an index, and follows
// the cheaper teas with a live query as prices change.
//
// Start the relay in the repository's root, then run the example there:
//
//	go run ./cmd/ferry relay --dev
//	go run ./examples/products
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/ferrysync/ferry/examples/internal/devrelay"
	"github.com/ferrysync/ferry/policy"
	"github.com/ferrysync/ferry/replica"
)

// Product is a record of the products collection. Its ID is the record's
// key (a UUIDv7 from Insert), not a field: unique across every device, as
// a synced table's primary key must be.
type Product struct {
	Name  string  `ferry:"name"`
	Price float64 `ferry:"price"`
	Qty   int     `ferry:"qty"`
	Cat   string  `ferry:"cat,omitempty"`
}

const (
	collection = "products"
	profile    = "relay"
)

func main() { devrelay.Main("products", run) }

func run(ctx context.Context, args []string, stdout io.Writer) error {
	creds, dir, done, err := devrelay.Setup("products", args, stdout)
	if err != nil {
		return err
	}
	defer done()

	fmt.Fprintf(stdout, "Two devices, one product, a price changed on both while offline (relay %s).\n", creds.URL)
	var results []result
	for _, pol := range []policy.Policy{policy.PreferLocal, policy.PreferCloud} {
		res, err := scenario(ctx, stdout, creds, filepath.Join(dir, string(pol)), pol)
		if err != nil {
			return fmt.Errorf("%s: %w", pol, err)
		}
		results = append(results, res)
	}

	fmt.Fprintf(stdout, "\nSide by side (the phone synced first, then the tablet):\n")
	fmt.Fprintf(stdout, "  %-13s %-7s %-7s %s\n", "policy", "phone", "tablet", "winner")
	for _, res := range results {
		fmt.Fprintf(stdout, "  %-13s %-7.2f %-7.2f %s\n", res.policy, res.phone, res.tablet, res.winner)
	}
	return catalogue(stdout, filepath.Join(dir, "catalogue"))
}

// catalogue lists products by category and price through an index, and
// follows the teas under 5.00 with a live query as their prices change.
func catalogue(out io.Writer, dir string) error {
	fmt.Fprintf(out, "\n== The catalogue, by category and price, through an index ==\n")
	r, err := replica.Open(dir, &replica.Options{LocalOnly: true})
	if err != nil {
		return err
	}
	defer r.Close()
	products := r.Collection(collection)
	// Declared at every start: built the first time, a look afterwards.
	if err := products.EnsureIndex("by_cat_price", replica.IndexOptions{Fields: []string{"cat", "price"}}); err != nil {
		return err
	}
	// The app's own IDs, so that a --data folder used before ends up the
	// same.
	ids := map[string]string{"Sencha": "sencha", "Earl Grey": "earl-grey", "Oolong": "oolong", "Espresso": "espresso", "Mocha": "mocha"}
	for _, p := range []Product{
		{Name: "Sencha", Price: 6.20, Cat: "tea"}, {Name: "Earl Grey", Price: 3.80, Cat: "tea"},
		{Name: "Oolong", Price: 4.40, Cat: "tea"}, {Name: "Espresso", Price: 2.90, Cat: "coffee"},
		{Name: "Mocha", Price: 3.50, Cat: "coffee"},
	} {
		if err := products.Put(ids[p.Name], p); err != nil {
			return err
		}
	}
	for _, cat := range []string{"coffee", "tea"} {
		q := replica.Query[Product]{Index: "by_cat_price", Eq: []any{cat}}
		for row, err := range replica.Select(products, q) {
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "  %-7s %-10s %.2f\n", cat, row.Value.Name, row.Value.Price)
		}
	}

	fmt.Fprintf(out, "Teas under 5.00, live:\n")
	live, err := replica.WatchQuery(products, replica.Query[Product]{Index: "by_cat_price", Eq: []any{"tea"}, To: 5.0}, 0)
	if err != nil {
		return err
	}
	defer live.Close()
	show := func(n int) {
		for range n {
			ch := <-live.C
			fmt.Fprintf(out, "  %-8s %-10s %.2f\n", ch.Kind, ch.Row.Value.Name, ch.Row.Value.Price)
		}
	}
	show(2) // Earl Grey and Oolong are in it
	for _, edit := range []struct {
		name  string
		price float64
	}{{"Sencha", 4.60}, {"Oolong", 4.90}, {"Earl Grey", 5.10}} {
		p := Product{}
		if err := products.Get(ids[edit.name], &p); err != nil {
			return err
		}
		p.Price = edit.price
		if err := products.Put(ids[edit.name], p); err != nil {
			return err
		}
		fmt.Fprintf(out, "  (%s now %.2f)\n", edit.name, edit.price)
		show(1)
	}
	return nil
}

// result is how one scenario ended.
type result struct {
	policy        policy.Policy
	phone, tablet float64 // the price each device ends with
	winner        string
}

// device is one replica with its products collection.
type device struct {
	name     string
	r        *replica.Replica
	products *replica.Collection
	out      io.Writer
}

func openDevice(name, dir string, creds devrelay.Credentials, pol policy.Policy, out io.Writer) (*device, error) {
	r, err := replica.Open(dir, &replica.Options{TokenSource: creds.Tokens})
	if err != nil {
		return nil, err
	}
	p := replica.Profile{
		Name:        profile,
		URL:         creds.URL,
		APIKey:      creds.APIKey,
		Mode:        policy.Manual,
		Type:        policy.TwoWay,
		Collections: []string{collection},
		Policy:      pol,
		Timeout:     10 * time.Second,
	}
	err = r.AddProfile(p)
	if errors.Is(err, replica.ErrProfileExists) { // a --data folder used before
		err = r.UpdateProfile(p)
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	products := r.Collection(collection)
	return &device{name: name, r: r, products: products, out: out}, nil
}

func (d *device) say(format string, a ...any) {
	fmt.Fprintf(d.out, "%-7s %s\n", d.name, fmt.Sprintf(format, a...))
}

// sync runs the profile and returns the products collection's statistics.
func (d *device) sync(ctx context.Context) (*replica.CollectionStats, error) {
	st, err := d.r.Sync(ctx, profile)
	if err != nil {
		return nil, fmt.Errorf("%s: sync: %w", d.name, err)
	}
	for _, cs := range st.Collections {
		if cs.Collection == collection {
			return cs, nil
		}
	}
	return nil, fmt.Errorf("%s: sync statistics lack %s", d.name, collection)
}

func (d *device) get(id string) (Product, error) {
	var p Product
	err := d.products.Get(id, &p)
	return p, err
}

func (d *device) setPrice(id string, price float64, qty int) error {
	p, err := d.get(id)
	if err != nil {
		return err
	}
	p.Price = price
	if qty >= 0 {
		p.Qty = qty
	}
	// Put writes only the fields that differ: the price (and the stock if
	// it changed), so the other device's edits to other fields survive.
	return d.products.Put(id, p)
}

func scenario(ctx context.Context, out io.Writer, creds devrelay.Credentials, dir string, pol policy.Policy) (res result, err error) {
	res.policy = pol
	switch pol {
	case policy.PreferLocal:
		fmt.Fprintf(out, "\n== prefer-local: the device that syncs keeps its own value ==\n")
	case policy.PreferCloud:
		fmt.Fprintf(out, "\n== prefer-cloud: the value already on the relay wins ==\n")
	}
	phone, err := openDevice("phone", filepath.Join(dir, "phone"), creds, pol, out)
	if err != nil {
		return res, err
	}
	defer phone.r.Close()
	tablet, err := openDevice("tablet", filepath.Join(dir, "tablet"), creds, pol, out)
	if err != nil {
		return res, err
	}
	defer tablet.r.Close()

	id, err := phone.products.Insert(Product{Name: "Green tea", Price: 4.50, Qty: 10})
	if err != nil {
		return res, err
	}
	if _, err := phone.sync(ctx); err != nil {
		return res, fmt.Errorf("%w\n(is the relay running? start it with `go run ./cmd/ferry relay --dev`)", err)
	}
	phone.say("adds Green tea at 4.50, 10 in stock (ID %s), and syncs", id)
	if _, err := tablet.sync(ctx); err != nil {
		return res, err
	}
	p, err := tablet.get(id)
	if err != nil {
		return res, err
	}
	tablet.say("syncs and sees %s at %.2f", p.Name, p.Price)

	fmt.Fprintf(out, "%-7s both go offline\n", "")
	if err := phone.setPrice(id, 4.90, 12); err != nil {
		return res, err
	}
	phone.say("sets the price to 4.90 and the stock to 12")
	if err := tablet.setPrice(id, 3.99, -1); err != nil {
		return res, err
	}
	tablet.say("sets the price to 3.99")

	cs, err := phone.sync(ctx)
	if err != nil {
		return res, err
	}
	phone.say("syncs first: sends %s, %s", plural(cs.ToRelay.Updated, "changed product"), plural(cs.Conflicts, "conflict"))
	cs, err = tablet.sync(ctx)
	if err != nil {
		return res, err
	}
	kept := "its own 3.99"
	if pol == policy.PreferCloud {
		kept = "the relay's 4.90"
	}
	tablet.say("syncs second: %s on the price (its 3.99, the relay's 4.90); %s keeps %s", plural(cs.Conflicts, "conflict"), pol, kept)
	if _, err := phone.sync(ctx); err != nil {
		return res, err
	}
	phone.say("syncs again")

	pp, err := phone.get(id)
	if err != nil {
		return res, err
	}
	tp, err := tablet.get(id)
	if err != nil {
		return res, err
	}
	fmt.Fprintf(out, "%-7s phone: %.2f, %d in stock; tablet: %.2f, %d in stock\n", "now", pp.Price, pp.Qty, tp.Price, tp.Qty)
	res.phone, res.tablet = pp.Price, tp.Price
	switch {
	case pp.Price != tp.Price:
		res.winner = "none: the devices disagree"
	case pp.Price == 3.99:
		res.winner = "the tablet's 3.99 (the syncing device's own value)"
	case pp.Price == 4.90:
		res.winner = "the phone's 4.90 (the value the relay already had)"
	default:
		res.winner = fmt.Sprintf("neither: %.2f", pp.Price)
	}
	return res, nil
}

// plural says "1 conflict" or "2 conflicts".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
