//go:build race

package crdt_test

// raceBuild: the race detector shadows memory, so resident memory is not
// what a relay takes.
const raceBuild = true
