//go:build !race

package crdt_test

const raceBuild = false
