//go:build unix

package pgtest

import (
	"os"
	"sync/atomic"
	"syscall"
	"testing"
)

// foreign locks the file as another process's test would: through an open
// file of its own, which flock treats apart from this package's.
func foreign(t *testing.T, dsn string, exclusive bool) (ok bool, release func()) {
	t.Helper()
	f, err := os.OpenFile(lockPath(dsn), os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	how := syscall.LOCK_SH | syscall.LOCK_NB
	if exclusive {
		how = syscall.LOCK_EX | syscall.LOCK_NB
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		if err == syscall.EWOULDBLOCK {
			return false, func() {}
		}
		t.Fatal(err)
	}
	return true, func() { f.Close() }
}

// A test holds the server shared from its first DSN call; a restart holds
// it alone, after every other holder has let go, and this process's tests
// hold it again afterwards.
func TestRestartWaitsForOtherTests(t *testing.T) {
	dsn := "host=/nonexistent/pgtest-lock-" + t.Name()
	t.Setenv("FERRY_TEST_POSTGRES", dsn)
	t.Setenv("FERRY_REQUIRE_POSTGRES", "")
	t.Cleanup(func() { os.Remove(lockPath(dsn)) })

	DSN(t)
	if ok, release := foreign(t, dsn, true); ok {
		release()
		t.Fatal("another process could restart the server while this test runs")
	}

	// Another process's test holds it too: the restart waits for it.
	ok, release := foreign(t, dsn, false)
	if !ok {
		t.Fatal("another process's test could not share the server")
	}
	var released atomic.Bool
	ran := make(chan error, 1)
	go func() {
		ran <- exclusively(dsn, func() error {
			if !released.Load() {
				t.Error("restarted while another process's test held the server")
			}
			if ok, release := foreign(t, dsn, false); ok {
				release()
				t.Error("a test could start during the restart")
			}
			return nil
		})
	}()
	released.Store(true)
	release()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if ok, release := foreign(t, dsn, true); ok {
		release()
		t.Fatal("after the restart, this test no longer holds the server")
	}
}
