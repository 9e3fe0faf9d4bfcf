//go:build linux && !race

package crdt

/*
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// glibc's, declared weak so that a C library without them (musl) links,
// and the calls are skipped.
extern int malloc_trim(size_t pad) __attribute__((weak));
extern int mallopt(int param, int value) __attribute__((weak));
extern int malloc_info(int options, FILE *fp) __attribute__((weak));

static void ferry_trim(void) {
	if (malloc_trim) malloc_trim(0);
}

// M_ARENA_MAX, from glibc's malloc.h (not included: musl's has none).
#define FERRY_M_ARENA_MAX (-8)
#define FERRY_ARENAS 2

// ferry_arenas is the number of arenas ferry_cap_arenas capped glibc's
// allocator at, or 0 if it left it alone.
static int ferry_arenas;

// ferry_cap_arenas runs when the program starts, before Go's runtime and
// any thread that calls into automerge-go: glibc gives each thread that
// allocates while another holds the arena an arena of its own, up to
// eight per core, and cgo calls run on many threads. Each arena keeps what
// was freed in it for its own reuse, so automerge-go's results, freed
// by finalizers on yet another thread, leave free memory spread over many
// arenas, which every trim returns and the next allocations fault back.
// A process that chose its own number (MALLOC_ARENA_MAX, or the
// glibc.malloc.arena_max tunable) keeps it.
__attribute__((constructor)) static void ferry_cap_arenas(void) {
	const char *t = getenv("GLIBC_TUNABLES");
	if (!mallopt || getenv("MALLOC_ARENA_MAX") || (t && strstr(t, "glibc.malloc.arena_max")))
		return;
	if (mallopt(FERRY_M_ARENA_MAX, FERRY_ARENAS) == 1)
		ferry_arenas = FERRY_ARENAS;
}

static int ferry_arena_cap(void) { return ferry_arenas; }

// ferry_arena_count counts the allocator's arenas in what malloc_info
// reports, or returns -1 if it cannot.
static int ferry_arena_count(void) {
	if (!malloc_info) return -1;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f) return -1;
	malloc_info(0, f);
	fclose(f);
	int n = 0;
	for (char *p = buf; p && (p = strstr(p, "<heap nr=")); p++) n++;
	free(buf);
	return n;
}
*/
import "C"

func releaseNative() { C.ferry_trim() }

// arenaCap is the number of arenas the C allocator was capped at when the
// program started (0: left as it was).
func arenaCap() int { return int(C.ferry_arena_cap()) }

// nativeArenas is the number of arenas the C allocator has now (-1:
// unknown), for tests.
func nativeArenas() int { return int(C.ferry_arena_count()) }
