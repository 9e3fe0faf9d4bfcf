package pgtest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// Tests of several packages share one server, and `go test ./...` runs
// packages at the same time: a test that restarts the server would break
// the connections of another package's test midway. So each test holds a
// shared lock on a file named after the server, from its first DSN call
// to its end, and Restart takes the lock exclusively: it waits for the
// tests of other packages that are running to end, and those that start
// meanwhile wait for the restart. In the restarting test's own process
// the locks are let go during the restart (they would conflict with it):
// tests there that run at the same time are that package's to order.

var (
	heldMu sync.Mutex // held across lock waits, so a restart and new holders take turns
	held   = map[testing.TB]*os.File{}
)

// lockPath is the lock file of the server dsn names.
func lockPath(dsn string) string {
	sum := sha256.Sum256([]byte(dsn))
	return filepath.Join(os.TempDir(), "ferry-pgtest-"+hex.EncodeToString(sum[:8])+".lock")
}

// holdShared takes t's shared lock on dsn's server, once per test,
// released when the test ends.
func holdShared(t testing.TB, dsn string) {
	heldMu.Lock()
	defer heldMu.Unlock()
	if _, ok := held[t]; ok {
		return
	}
	f, err := lockFile(lockPath(dsn), false)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	held[t] = f
	t.Cleanup(func() {
		heldMu.Lock()
		defer heldMu.Unlock()
		held[t].Close() // releases the lock
		delete(held, t)
	})
}

// exclusively runs fn holding dsn's lock exclusively, once no other
// process's test holds it, and returns its error.
func exclusively(dsn string, fn func() error) error {
	heldMu.Lock()
	defer heldMu.Unlock()
	for _, f := range held {
		f.Close()
	}
	err := func() error {
		f, err := lockFile(lockPath(dsn), true)
		if err != nil {
			return err
		}
		defer f.Close()
		return fn()
	}()
	for tb := range held {
		f, lerr := lockFile(lockPath(dsn), false)
		if lerr != nil {
			return errors.Join(err, lerr)
		}
		held[tb] = f
	}
	return err
}

// lockFile opens path and locks it, shared or exclusive, waiting for it.
func lockFile(path string, exclusive bool) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	if err := flock(f, exclusive); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return f, nil
}
