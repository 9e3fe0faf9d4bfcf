//go:build !linux || race

package crdt

func releaseNative() {}

func arenaCap() int { return 0 }

func nativeArenas() int { return -1 }
