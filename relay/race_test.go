//go:build race

package relay_test

// raceBuild: the race detector shadows memory, so resident memory is not
// what a relay takes.
const raceBuild = true
