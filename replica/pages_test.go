package replica

import (
	"fmt"
	"runtime"
	"testing"
)

// An index build releases the store's table pages between its pages
// while it holds the replica's read lock: a Close that meanwhile waits
// for the write lock must not stop the release, or neither would go on.
func TestCloseDuringIndexBuildReleasingPages(t *testing.T) {
	r := open(t, t.TempDir(), &Options{LocalOnly: true, Relaxed: true, GCInterval: -1})
	err := r.Write(func(tx *Tx) error {
		for i := range 3 * 256 {
			if err := tx.Put("c", fmt.Sprintf("r%04d", i), map[string]any{"n": i}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r.mem.readEvery = 1 // a collection and a release after every page
	closed := make(chan error, 1)
	progress := func(done int) {
		if done != 256 {
			return
		}
		go func() { closed <- r.Close() }()
		// Until Close waits for the write lock: a writer waiting makes
		// TryRLock fail.
		for r.mu.TryRLock() {
			r.mu.RUnlock()
			runtime.Gosched()
		}
	}
	// The build finishes, or stops with ErrClosed: either way it returns.
	err = r.Collection("c").EnsureIndex("by_n", IndexOptions{Fields: []string{"n"}, Progress: progress})
	t.Logf("EnsureIndex: %v", err)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}
