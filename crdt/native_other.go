//go:build !linux || race

package crdt

func releaseNative() {}
