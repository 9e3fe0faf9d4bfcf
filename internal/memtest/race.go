//go:build race

package memtest

const raceEnabled = true
