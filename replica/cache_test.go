package replica

import (
	"errors"
	"fmt"
	"testing"

	"github.com/ferrysync/ferry/crdt"
)

// docOf returns the document a record's operations use now (its cached
// one, loaded if need be), through an update that changes nothing.
func docOf(t *testing.T, c *Collection, id string) *crdt.Doc {
	t.Helper()
	var d *crdt.Doc
	if err := c.Update(id, func(doc *crdt.Doc) error { d = doc; return nil }); err != nil {
		t.Fatal(err)
	}
	return d
}

// otherStripe returns n record IDs whose locks are not id's.
func otherStripe(r *Replica, coll, id string, n int) []string {
	var out []string
	for i := 0; len(out) < n; i++ {
		o := fmt.Sprintf("other-%d", i)
		if r.locks.index(cacheKey(coll, o)) != r.locks.index(cacheKey(coll, id)) {
			out = append(out, o)
		}
	}
	return out
}

// TestEvictedDocumentsAreFreed fills a small cache: the documents that
// leave it are freed, the ones in it are not, and Close frees the rest.
func TestEvictedDocumentsAreFreed(t *testing.T) {
	const bound = 6 * docBaseBytes
	r, err := Open("", &Options{InMemory: true, CacheBytes: bound})
	if err != nil {
		t.Fatal(err)
	}
	c := coll(t, r, "c")
	var docs []*crdt.Doc
	for i := range 40 {
		id := fmt.Sprint("r", i)
		if err := c.Put(id, map[string]any{"i": i}); err != nil {
			t.Fatal(err)
		}
		docs = append(docs, docOf(t, c, id))
	}
	r.reap.drain()
	if size := r.cache.size(); size > bound {
		t.Fatalf("cache holds %d bytes, bound %d", size, bound)
	}
	cached, freed := 0, 0
	for i, d := range docs {
		in := r.cache.holds(cacheKey("c", fmt.Sprint("r", i)), d)
		switch {
		case in && d.Freed():
			t.Fatalf("record %d: its cached document was freed", i)
		case !in && !d.Freed():
			t.Fatalf("record %d: its document left the cache but was not freed", i)
		case in:
			cached++
		default:
			freed++
		}
	}
	if cached == 0 || freed == 0 {
		t.Fatalf("%d cached, %d freed: the test did not evict", cached, freed)
	}
	// Evicted records load again, whole.
	for i := range 40 {
		var m map[string]any
		if err := c.Get(fmt.Sprint("r", i), &m); err != nil || m["i"] != int64(i) {
			t.Fatalf("record %d = %v, %v", i, m, err)
		}
	}
	last := docOf(t, c, "r39")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if !last.Freed() {
		t.Fatal("Close left a cached document unfreed")
	}
}

// TestInUseDocumentOutlivesEviction evicts a record's document while an
// update and, separately, a read of that record still use it: the reaper
// waits for the record's lock, so it frees the document only after. Run
// with -race: freeing under a user races with it even if the check
// below were to miss it.
func TestInUseDocumentOutlivesEviction(t *testing.T) {
	for _, how := range []string{"update", "read"} {
		t.Run(how, func(t *testing.T) {
			r := open(t, "", &Options{InMemory: true, CacheBytes: 3 * docBaseBytes})
			c := coll(t, r, "c")
			if err := c.Put("x", map[string]any{"n": 0}); err != nil {
				t.Fatal(err)
			}
			others := otherStripe(r, "c", "x", 8)
			for _, id := range others {
				if err := c.Put(id, map[string]any{"n": 0}); err != nil {
					t.Fatal(err)
				}
			}
			// The reaper reports when it is about to free x's document.
			reaping := make(chan struct{}, 1)
			r.reap.mu.Lock()
			r.reap.waiting = func(key string) {
				if key == cacheKey("c", "x") {
					select {
					case reaping <- struct{}{}:
					default:
					}
				}
			}
			r.reap.mu.Unlock()

			inside, resume := make(chan *crdt.Doc), make(chan struct{})
			done := make(chan error, 1)
			use := func(d *crdt.Doc) error {
				inside <- d
				<-resume
				// Use the document after it left the cache.
				for range 100 {
					if _, err := d.Fields(); err != nil {
						return err
					}
				}
				if how == "update" {
					return d.Set(crdt.Path{"n"}, int64(1))
				}
				return nil
			}
			go func() {
				if how == "update" {
					done <- c.Update("x", use)
				} else {
					done <- c.read("x", func(d *crdt.Doc, _ meta) error { return use(d) })
				}
			}()
			d := <-inside
			// Edits of other records, on other locks, push x's document
			// out (a record's creation leaves nothing cached).
			for _, id := range others {
				if err := c.Put(id, map[string]any{"n": 1}); err != nil {
					t.Fatal(err)
				}
			}
			if r.cache.holds(cacheKey("c", "x"), d) {
				t.Fatal("x's document is still cached: the test did not evict it")
			}
			<-reaping // the reaper now waits for x's lock
			close(resume)
			if err := <-done; err != nil {
				t.Fatalf("%s of x with its document evicted meanwhile: %v", how, err)
			}
			r.reap.drain()
			switch how {
			case "update":
				// The update put its document back in the cache: kept.
				if d.Freed() || !r.cache.holds(cacheKey("c", "x"), d) {
					t.Fatalf("after the update: freed %v, cached %v", d.Freed(), r.cache.holds(cacheKey("c", "x"), d))
				}
			case "read":
				if !d.Freed() {
					t.Fatal("the read's document, evicted, was not freed once the read ended")
				}
			}
			var m map[string]any
			if err := c.Get("x", &m); err != nil {
				t.Fatal(err)
			}
			if want := map[string]int64{"update": 1, "read": 0}[how]; m["n"] != want {
				t.Fatalf("x = %v, want n=%d", m, want)
			}
		})
	}
}

// TestFailedCommitFreesItsDocuments: a unit of work that fails drops the
// documents it changed from the cache and frees them.
func TestFailedCommitFreesItsDocuments(t *testing.T) {
	r := open(t, "", &Options{InMemory: true})
	c := coll(t, r, "c")
	if err := c.Put("x", map[string]any{"n": 0}); err != nil {
		t.Fatal(err)
	}
	var d, nd *crdt.Doc
	err := r.Write(func(tx *Tx) error {
		tx.Update("c", "x", func(doc *crdt.Doc) error { d = doc; return doc.Set(crdt.Path{"n"}, int64(1)) })
		// A new record's document, never cached.
		tx.Put("c", "new", map[string]any{"n": 1})
		tx.Update("c", "new", func(doc *crdt.Doc) error { nd = doc; return nil })
		return tx.Create("c", "x", map[string]any{}) // x exists: the unit fails
	})
	if !errors.Is(err, ErrExists) {
		t.Fatalf("Update = %v, want ErrExists", err)
	}
	if !d.Freed() || !nd.Freed() {
		t.Fatalf("the failed unit's documents, holding edits never stored, were not freed: x %v, new %v", d.Freed(), nd.Freed())
	}
	var m map[string]any
	if err := c.Get("x", &m); err != nil || m["n"] != int64(0) {
		t.Fatalf("x = %v, %v after the failed unit", m, err)
	}
}

// A unit of work keeps no document of a record it creates (reads use the
// read model): a bulk insert leaves the cache empty. An edit of a stored
// record keeps its document, for the next edit.
func TestCreatedRecordsLeaveNothingCached(t *testing.T) {
	r := open(t, "", &Options{InMemory: true})
	err := r.Write(func(tx *Tx) error {
		for i := range 200 {
			if err := tx.Put("c", fmt.Sprintf("r%03d", i), map[string]any{"n": i}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n, size := r.cache.len(), r.cache.size(); n != 0 || size != 0 {
		t.Fatalf("after inserting 200 records the cache holds %d documents (%d bytes), want none", n, size)
	}
	c := coll(t, r, "c")
	if err := c.Put("r007", map[string]any{"n": -7}); err != nil {
		t.Fatal(err)
	}
	if n := r.cache.len(); n != 1 {
		t.Fatalf("after an edit the cache holds %d documents, want 1", n)
	}
	var m map[string]any
	if err := c.Get("r199", &m); err != nil || m["n"] != int64(199) {
		t.Fatalf("r199 = %v, %v", m, err)
	}
}

// TestCachedDocumentCountsWhatItHolds: a record of many small objects
// takes tens of times its stored bytes once loaded; the cache counts a
// document loaded from the store by what it holds (its changes and
// operations), within a quarter of crdt.Cost (crdt.Estimate counts a
// saved document up to a sixth high), not by its stored size.
func TestCachedDocumentCountsWhatItHolds(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(dir, &Options{Relaxed: true})
	if err != nil {
		t.Fatal(err)
	}
	// Objects of a few small values each: cheap to store, dear to load.
	items := make([]any, 0, 4000)
	for i := range 4000 {
		items = append(items, map[string]any{"done": i%3 == 0, "tags": []any{"a", "b"}})
	}
	if err := coll(t, r, "c").Put("heavy", map[string]any{"items": items}); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	// A cache that holds it (it takes some 21 MB loaded).
	r, err = Open(dir, &Options{CacheBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	d := docOf(t, coll(t, r, "c"), "heavy")
	cost, err := d.Cost()
	if err != nil {
		t.Fatal(err)
	}
	got := r.cache.size()
	e, _ := r.cache.c.Peek(cacheKey("c", "heavy"))
	stored := e.m.snapBytes + e.m.chunkBytes
	t.Logf("stored %d bytes; cache counts %d, Cost %d, by stored size %d (per stored %v, %d entries)", stored, got, cost.Bytes, docMemory(e.m), e.perStored, r.cache.len())
	if got < cost.Bytes*4/5 || got > cost.Bytes*5/4 {
		t.Fatalf("the cache counts %d bytes for a document Cost puts at %d (stored: %d bytes)", got, cost.Bytes, stored)
	}
}
