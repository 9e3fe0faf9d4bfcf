package crdt

// Native memory: what automerge-go's Rust core allocates, outside Go's
// heap. Beside documents (see free.go), every automerge-go call returns
// its values in a result that only a finalizer frees, so reading or
// writing many records leaves native memory to be freed whenever Go's
// garbage collector next runs, which a small Go heap makes rare: inserting
// 100,000 small records held some 450 MB of such results at once. And
// the C allocator keeps what is freed for reuse rather than giving it
// back, so the peak stays in the process's resident memory. On Linux with
// glibc, the allocator is capped at two arenas when the program starts
// (native_linux.go), unless the process set its own number.

// ReleaseNative returns to the operating system the native memory that
// is free. Call it after a garbage collection has run the finalizers (see
// above); on Linux with glibc it trims the allocator's heaps, elsewhere it
// does nothing. Under the race detector, whose runtime brings its own
// allocator, it does nothing either: glibc's heaps do not hold the
// program's memory there, and the detector's runtime is better left alone. It takes milliseconds; it is safe to call at any time from
// any goroutine.
func ReleaseNative() { releaseNative() }
