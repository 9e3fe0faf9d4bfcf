package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

// deviceEnv, set in its environment, makes an executable that calls
// [DeviceMain] run W6's device instead of its own work.
const deviceEnv = "FERRY_BENCH_DEVICE"

// deviceSpec is what W6 asks of its device process, on its standard input.
type deviceSpec struct {
	Records int    `json:"records"`
	Seed    uint64 `json:"seed"`
	Dir     string `json:"dir"`
}

// deviceResult is the device's figures, with its process ID.
type deviceResult struct {
	PID     int      `json:"pid"`
	Metrics []Metric `json:"metrics"`
	Notes   []string `json:"notes"`
}

// deviceLine is one line the device process writes on its standard
// output: a progress line, its result, or its error.
type deviceLine struct {
	Progress string        `json:"progress,omitempty"`
	Result   *deviceResult `json:"result,omitempty"`
	Error    string        `json:"error,omitempty"`
	Check    bool          `json:"check,omitempty"` // Error is a failed check
}

// DeviceMain runs W6's device and exits if this process was started as
// one by W6, which starts its own executable again for it; otherwise it
// returns at once. A program that runs W6 calls it first thing in main
// (a test binary, in TestMain).
func DeviceMain() {
	if os.Getenv(deviceEnv) == "" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := serveDevice(ctx, os.Stdin, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// serveDevice reads a deviceSpec from in, runs W6's device, and writes
// its progress and result to out as JSON lines. Then it waits until in
// ends, so that W6 may read this process's /proc figures beside its own
// report.
func serveDevice(ctx context.Context, in io.Reader, out io.Writer) error {
	r := bufio.NewReader(in)
	var spec deviceSpec
	if err := json.NewDecoder(io.LimitReader(r, 1<<20)).Decode(&spec); err != nil {
		return fmt.Errorf("bench: device: reading its spec: %w", err)
	}
	enc := json.NewEncoder(out)
	res, err := w6Device(ctx, spec, func(s string) { enc.Encode(deviceLine{Progress: s}) })
	if err != nil {
		enc.Encode(deviceLine{Error: err.Error(), Check: errors.Is(err, errCheck)})
		return err
	}
	res.PID = os.Getpid()
	if err := enc.Encode(deviceLine{Result: res}); err != nil {
		return fmt.Errorf("bench: device: %w", err)
	}
	io.Copy(io.Discard, r)
	return nil
}

// runDevice runs W6's device in a process of its own (this executable
// again) and returns its result, after checking that it came from
// another process whose own peak RSS, read here from /proc, covers the
// peak it reported.
func runDevice(ctx context.Context, spec deviceSpec, progress func(string)) (*deviceResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("bench: W6 device: finding this executable: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), deviceEnv+"=1")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	stderr := &tail{max: 8 << 10}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: W6 device: start: %w", err)
	}
	stop := func() { stdin.Close(); cmd.Wait() }
	if err := json.NewEncoder(stdin).Encode(spec); err != nil {
		stop()
		return nil, fmt.Errorf("bench: W6 device: %w; stderr: %s", err, stderr)
	}
	lines := bufio.NewScanner(stdout)
	lines.Buffer(nil, 16<<20)
	var res *deviceResult
	for res == nil && lines.Scan() {
		var l deviceLine
		if err := json.Unmarshal(lines.Bytes(), &l); err != nil {
			stop()
			return nil, fmt.Errorf("bench: W6 device: its output %.200q: %w", lines.Bytes(), err)
		}
		switch {
		case l.Error != "" && l.Check:
			stop()
			return nil, fmt.Errorf("%w: device: %s", errCheck, l.Error)
		case l.Error != "":
			stop()
			return nil, fmt.Errorf("bench: W6 device: %s", l.Error)
		case l.Result != nil:
			res = l.Result
		case progress != nil:
			progress(l.Progress)
		}
	}
	if res == nil {
		stop()
		return nil, fmt.Errorf("bench: W6 device ended without a result (%v); stderr: %s", lines.Err(), stderr)
	}
	// The device waits for stdin's end: read its /proc figures meanwhile.
	pid := cmd.Process.Pid
	st, stErr := procStatus(fmt.Sprint(pid))
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("bench: W6 device exited with %v; stderr: %s", err, stderr)
	}
	if stErr != nil {
		return nil, stErr
	}
	peak, _ := metricIn(res.Metrics, "insert_peak_rss")
	switch {
	case res.PID != pid || pid == os.Getpid():
		return nil, checkf("W6's device reported PID %d; it ran as %d, the bench as %d", res.PID, pid, os.Getpid())
	case float64(st.VmHWM) < peak.Value:
		return nil, checkf("W6's device reported a peak RSS of %.0f B, above its process's peak (%d B)", peak.Value, st.VmHWM)
	}
	res.Metrics = append(res.Metrics, Metric{Name: "device_peak_rss", Value: float64(st.VmHWM), Unit: "B",
		Note: "the device process's peak RSS from the insert to the end (VmHWM), read by the bench"})
	return res, nil
}

func metricIn(ms []Metric, name string) (Metric, bool) {
	for _, m := range ms {
		if m.Name == name {
			return m, true
		}
	}
	return Metric{}, false
}
