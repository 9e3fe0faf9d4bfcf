//go:build !linux || race

package crdt

func releaseNative() {}

func nativeInUse() (int64, bool) { return 0, false }
