//go:build linux && !race

package crdt

/*
#include <stddef.h>
// malloc_trim is glibc's; declared weak so that a C library without it
// (musl) links, and the call is skipped.
extern int malloc_trim(size_t pad) __attribute__((weak));
static void ferry_trim(void) {
	if (malloc_trim) malloc_trim(0);
}

// mallinfo2 is glibc's too (2.33 and later), weak for the same reason.
#include <malloc.h>
extern struct mallinfo2 mallinfo2(void) __attribute__((weak));
// ferry_in_use is the C allocator's bytes in use (allocated chunks, the
// ones mapped on their own included), or -1 where mallinfo2 is missing.
static long long ferry_in_use(void) {
	if (!mallinfo2) return -1;
	struct mallinfo2 m = mallinfo2();
	return (long long)(m.uordblks + m.hblkhd);
}
*/
import "C"

func releaseNative() { C.ferry_trim() }

func nativeInUse() (int64, bool) {
	n := int64(C.ferry_in_use())
	return n, n >= 0
}
