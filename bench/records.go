package bench

import (
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/ferrysync/ferry/crdt"
)

// Product is the record every workload writes: a small row of an app's
// table, {name: 16-char string, price: float, qty: int, tags: 3 short
// strings, updated: int}.
type Product struct {
	Name    string   `ferry:"name"`
	Price   float64  `ferry:"price"`
	Qty     int      `ferry:"qty"`
	Tags    []string `ferry:"tags"`
	Updated int64    `ferry:"updated"`
}

var tagWords = []string{"tea", "green", "black", "loose", "bag", "iced", "oolong", "white", "chai", "mint"}

const nameChars = "abcdefghijklmnopqrstuvwxyz0123456789"

// products returns n products made from seed and stream: the same
// arguments give the same products.
func products(seed, stream uint64, n int) []Product {
	rng := rand.New(rand.NewPCG(seed, stream))
	out := make([]Product, n)
	for i := range out {
		out[i] = randomProduct(rng, i)
	}
	return out
}

func randomProduct(rng *rand.Rand, i int) Product {
	name := make([]byte, 16)
	for j := range name {
		name[j] = nameChars[rng.IntN(len(nameChars))]
	}
	return Product{
		Name:    string(name),
		Price:   float64(rng.IntN(100_000)) / 100,
		Qty:     rng.IntN(1000),
		Tags:    []string{tagWords[rng.IntN(len(tagWords))], tagWords[rng.IntN(len(tagWords))], tagWords[rng.IntN(len(tagWords))]},
		Updated: 1_700_000_000_000 + int64(i),
	}
}

// equalFields checks that m, a record's fields as a replica reads them,
// hold p.
func (p Product) equalFields(m map[string]any) error {
	var got Product
	if err := crdt.DecodeValue(m, &got); err != nil {
		return err
	}
	if got.Name != p.Name || got.Price != p.Price || got.Qty != p.Qty || got.Updated != p.Updated ||
		len(got.Tags) != len(p.Tags) {
		return fmt.Errorf("got %+v, want %+v", got, p)
	}
	for i := range p.Tags {
		if got.Tags[i] != p.Tags[i] {
			return fmt.Errorf("got %+v, want %+v", got, p)
		}
	}
	return nil
}

// actorID derives an Automerge actor ID (16 bytes in hex, as a replica's
// ID is) from seed and stream.
func actorID(seed, stream uint64) string {
	rng := rand.New(rand.NewPCG(seed, stream^0x9e3779b97f4a7c15))
	b := make([]byte, 16)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return hex.EncodeToString(b)
}

// created is one record's creation change, as a replica's Insert makes it.
type created struct {
	data  []byte
	heads crdt.Heads
}

// creationChanges returns each product's creation change made by actor:
// a fresh document, the product's fields put (crdt.Doc.Put, what
// replica's Insert runs), one commit stamped at. These are the same
// changes a replica makes for the same products, but for the actor and
// the time stamp.
func creationChanges(actor string, ps []Product, at time.Time) ([]created, int64, error) {
	out := make([]created, len(ps))
	var total int64
	for i, p := range ps {
		d, err := crdt.New(actor)
		if err != nil {
			return nil, 0, err
		}
		if err := d.Put(p); err != nil {
			return nil, 0, err
		}
		if _, err := d.Commit("", at); err != nil {
			return nil, 0, err
		}
		data, err := d.ChangesSince(nil)
		if err != nil {
			return nil, 0, err
		}
		out[i] = created{data: data, heads: d.Heads()}
		total += int64(len(data))
	}
	return out, total, nil
}
