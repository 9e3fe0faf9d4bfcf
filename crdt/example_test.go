package crdt_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

func ExampleDoc() {
	type Product struct {
		Name  string       `ferry:"name"`
		Price float64      `ferry:"price"`
		Stock crdt.Counter `ferry:"stock"`
		Notes crdt.Text    `ferry:"notes,omitempty"`
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) // crdt takes no clock

	// A phone creates the record and commits it.
	phone, _ := crdt.New("aa01")
	_ = phone.Put(Product{Name: "lamp", Price: 19.5, Stock: 10})
	_, _ = phone.Commit("create", now)

	// A laptop takes every change the phone has.
	laptop, _ := crdt.New("bb02")
	all, _ := phone.ChangesSince(nil)
	_, _ = laptop.Import(all)
	shared := laptop.Heads() // the version both hold

	// Offline, both edit: the phone sells two, the laptop reprices and
	// restocks five.
	var p Product
	_ = phone.Decode(&p)
	p.Stock -= 2
	_ = phone.Put(p)
	_, _ = phone.Commit("sell", now)

	_ = laptop.Decode(&p)
	p.Price, p.Stock = 17, p.Stock+5
	_ = laptop.Put(p)
	_, _ = laptop.Commit("reprice", now)

	// Back online, each sends its changes since the shared version.
	toLaptop, _ := phone.ChangesSince(shared)
	toPhone, _ := laptop.ChangesSince(shared)
	n, _ := laptop.Import(toLaptop)
	_, _ = phone.Import(toPhone)
	fmt.Println("new on the laptop:", n)

	var a, b Product
	_ = phone.Decode(&a)
	_ = laptop.Decode(&b)
	fmt.Printf("phone:  %+v\nlaptop: %+v\n", a, b)
	fmt.Println("same version:", phone.Heads().Equal(laptop.Heads()))
	// Output:
	// new on the laptop: 1
	// phone:  {Name:lamp Price:17 Stock:13 Notes:}
	// laptop: {Name:lamp Price:17 Stock:13 Notes:}
	// same version: true
}

// Fields are read and written by path: map keys outermost first, list
// indexes as ints. Text and Counter merge their concurrent edits instead of
// conflicting.
func ExampleDoc_Set() {
	d, _ := crdt.New("aa01")
	defer d.Free()
	_ = d.Set(crdt.Path{"name"}, "lamp")
	_ = d.Set(crdt.Path{"address", "city"}, "Lyon") // parent maps are created
	_ = d.Set(crdt.Path{"tags"}, []any{"new"})
	_ = d.InsertAt(crdt.Path{"tags"}, 0, "sale")
	_ = d.Set(crdt.Path{"stock"}, crdt.Counter(3))
	_ = d.Increment(crdt.Path{"stock"}, 2)
	_ = d.SpliceText(crdt.Path{"notes"}, 0, 0, "bright")
	_, _ = d.Commit("edit", time.Time{})

	city, _ := d.Get(crdt.Path{"address", "city"})
	tag, _ := d.Get(crdt.Path{"tags", 0})
	stock, _ := d.Get(crdt.Path{"stock"})
	_, ok, _ := d.Lookup(crdt.Path{"price"})
	notes, _, _ := d.GetTyped(crdt.Path{"notes"})
	fmt.Println(city, tag, stock, ok)
	fmt.Printf("%T %q\n", notes, notes)
	// Output:
	// Lyon sale 5 false
	// crdt.Text "bright"
}

// A device sends the changes a peer lacks as bytes; the peer imports them.
// Importing what it already holds changes nothing.
func ExampleDoc_Import() {
	phone, _ := crdt.New("aa01")
	defer phone.Free()
	_ = phone.Set(crdt.Path{"title"}, "buy milk")
	_, _ = phone.Commit("", time.Time{})

	laptop, _ := crdt.New("bb02")
	defer laptop.Free()
	changes, _ := phone.ChangesSince(nil) // nil: every change
	n, err := laptop.Import(changes)
	fmt.Println(n, err)
	n, err = laptop.Import(changes)
	fmt.Println(n, err)

	_, err = laptop.Import([]byte("not automerge"))
	fmt.Println(errors.Is(err, crdt.ErrCorrupt))
	title, _ := laptop.Get(crdt.Path{"title"})
	fmt.Println(title)
	// Output:
	// 1 <nil>
	// 0 <nil>
	// true
	// buy milk
}

// Diff3 compares two sides with the version they last shared: what each
// changed alone, and where both changed one field to different values.
func ExampleDiff3() {
	base, _ := crdt.New("aa01")
	defer base.Free()
	_ = base.Put(map[string]any{"price": 20.0, "stock": 5})
	_, _ = base.Commit("", time.Time{})

	local, _ := base.Fork(nil)
	defer local.Free()
	_ = local.SetActor("bb02")
	_ = local.Set(crdt.Path{"price"}, 18.0)
	_, _ = local.Commit("", time.Time{})

	remote, _ := base.Fork(nil)
	defer remote.Free()
	_ = remote.SetActor("cc03")
	_ = remote.Set(crdt.Path{"price"}, 22.0)
	_ = remote.Set(crdt.Path{"stock"}, 4)
	_, _ = remote.Commit("", time.Time{})

	diff, _ := crdt.Diff3(base, local, remote)
	for _, c := range diff.Remote {
		fmt.Println("remote only:", c.Path, c.Old, "->", c.New)
	}
	for _, c := range diff.Conflicts {
		fmt.Println("conflict:", c.Path, "base", c.Base, "local", c.Local, "remote", c.Remote)
	}
	// Output:
	// remote only: stock 5 -> 4
	// conflict: price base 20 local 18 remote 22
}
