//go:build !linux

package crdt

func releaseNative() {}
