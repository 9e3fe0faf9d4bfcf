// Package procmem reads this process's resident memory from the
// operating system, for the code that paces its own memory by it (the
// device's native-memory releases, the relay's resident-memory loop) and
// for the tests that measure it.
package procmem
