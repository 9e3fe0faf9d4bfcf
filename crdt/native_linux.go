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
*/
import "C"

func releaseNative() { C.ferry_trim() }
