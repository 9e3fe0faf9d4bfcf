//go:build !race

package relay_test

const raceBuild = false
