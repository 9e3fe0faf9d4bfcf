package crdt

import (
	"fmt"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/ferrysync/ferry/internal/memtest"
)

// arenaEnv tells the process TestNativeArenasCapped starts what to check.
const arenaEnv = "FERRY_ARENA_CHILD"

// The C allocator is capped at two arenas when the program starts, unless
// the process chose its number itself: threads that call into
// automerge-go then share two arenas instead of taking one each. Each
// case runs in a process of its own (arenas are made as threads first
// allocate, and the cap is set before any), built without the race
// detector (under which the cap is not set).
func TestNativeArenasCapped(t *testing.T) {
	if mode := os.Getenv(arenaEnv); mode != "" {
		arenasChild(t, mode)
		return
	}
	for _, c := range []struct{ mode, env string }{
		{"capped", ""},
		{"own", "MALLOC_ARENA_MAX=8"},
		{"own", "GLIBC_TUNABLES=glibc.malloc.arena_max=8"},
	} {
		env := []string{arenaEnv + "=" + c.mode}
		if c.env != "" {
			env = append(env, c.env)
		}
		out := memtest.Run(t, env...)
		if m := regexp.MustCompile(`arenas: .*`).Find(out); m != nil {
			t.Logf("%s: %s", c.env, m)
		}
	}
}

// arenasChild has eight threads call into automerge-go at once and checks
// the number of arenas the allocator made for them against mode: at most
// two if capped, more if the process set its own limit.
func arenasChild(t *testing.T, mode string) {
	if n := nativeArenas(); n < 0 {
		t.Skip("the C allocator does not report its arenas")
	}
	const threads = 8
	var started, done sync.WaitGroup
	started.Add(threads)
	done.Add(threads)
	hold := make(chan struct{})
	for i := range threads {
		go func() {
			defer done.Done()
			// A thread of its own: the others are started while this
			// one is held, locked to it.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			d, err := New(fmt.Sprintf("%032x", i+1))
			if err != nil {
				t.Error(err)
			}
			started.Done()
			<-hold
			if err == nil {
				d.Free()
			}
		}()
	}
	started.Wait()
	close(hold)
	done.Wait()
	n := nativeArenas()
	fmt.Printf("arenas: %d after %d threads allocated, cap %d\n", n, threads, arenaCap())
	switch mode {
	case "capped":
		if arenaCap() != 2 || n > 2 {
			t.Fatalf("%d arenas after %d threads allocated (cap %d), want at most 2", n, threads, arenaCap())
		}
	case "own":
		if arenaCap() != 0 || n <= 2 {
			t.Fatalf("with the process's own limit: %d arenas after %d threads allocated (cap %d), want the process's limit", n, threads, arenaCap())
		}
	default:
		t.Fatalf("%s=%s", arenaEnv, strconv.Quote(mode))
	}
}
