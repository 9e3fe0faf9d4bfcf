package replica

import (
	"fmt"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// Every five hundred record writes, the writer that crosses the mark
// releases native memory, with every lock released: the release may
// write to the very records just written without deadlock.
func TestNativeReleasedEveryFiveHundredWrites(t *testing.T) {
	r := open(t, "", &Options{InMemory: true})
	c := r.Collection("c")
	releases := 0
	r.mem.collect = func() {
		releases++
		// A write to a record of the unit that crossed the mark: it
		// would wait forever for a lock still held.
		if err := c.Put("r0099", map[string]any{"released": releases}); err != nil {
			t.Error(err)
		}
	}
	for u := range 25 {
		err := r.Write(func(tx *Tx) error {
			for i := range 100 {
				if err := tx.Put("c", fmt.Sprintf("r%04d", u*100+i), map[string]any{"n": i}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if releases != 5 {
		t.Fatalf("%d releases after 2,500 writes (and the releases' own), want 5", releases)
	}
	crdt.ReleaseNative() // the real one runs
}
