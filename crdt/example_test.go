package crdt_test

import (
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
