//go:build !linux

package replica

import "time"

// threadCPU is the process's CPU time where the thread's is not read.
func threadCPU() time.Duration { return processCPU() }
