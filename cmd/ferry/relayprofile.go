package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
)

// relayProfileEnv names the file a relay writes a CPU profile of its run
// to, for profiling a relay that a benchmark starts as a child process
// (ferry bench --child), where no flag reaches it. "%p" in the name
// becomes the relay's process ID, so that the relays a run starts one
// after another each keep their own.
const relayProfileEnv = "FERRY_RELAY_CPUPROFILE"

// relayAllocProfileEnv names the file a relay writes its allocation
// profile to when it stops (go tool pprof -sample_index=alloc_space), as
// relayProfileEnv does for CPU.
const relayAllocProfileEnv = "FERRY_RELAY_MEMPROFILE"

// startRelayProfile starts the CPU profile that relayProfileEnv asks for,
// if any, and returns what stops it and writes it out.
func startRelayProfile() (stop func() error, err error) {
	stopCPU, err := startRelayCPUProfile()
	if err != nil {
		return nil, err
	}
	name := os.Getenv(relayAllocProfileEnv)
	if name == "" {
		return stopCPU, nil
	}
	name = strings.ReplaceAll(name, "%p", strconv.Itoa(os.Getpid()))
	return func() error {
		err := stopCPU()
		f, ferr := os.Create(name)
		if ferr != nil {
			return errors.Join(err, fmt.Errorf("relay: %s: %w", relayAllocProfileEnv, ferr))
		}
		werr := pprof.Lookup("allocs").WriteTo(f, 0)
		return errors.Join(err, werr, f.Close())
	}, nil
}

func startRelayCPUProfile() (stop func() error, err error) {
	name := os.Getenv(relayProfileEnv)
	if name == "" {
		return func() error { return nil }, nil
	}
	name = strings.ReplaceAll(name, "%p", strconv.Itoa(os.Getpid()))
	f, err := os.Create(name)
	if err != nil {
		return nil, fmt.Errorf("relay: %s: %w", relayProfileEnv, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("relay: %s: %w", relayProfileEnv, err)
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}
