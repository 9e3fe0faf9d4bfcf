package main

import (
	"bytes"
	"context"
	"runtime/debug"
	"strings"
	"testing"
)

// runCLI runs a command line as main would, returning its exit code and
// what it printed on each stream.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runMain(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestHelpGoesToStdoutAndExitsZero(t *testing.T) {
	for _, c := range commands {
		for _, args := range [][]string{{c.name, "-h"}, {c.name, "--help"}, {"help", c.name}} {
			code, out, errs := runCLI(t, args...)
			if code != 0 || errs != "" {
				t.Errorf("%v: exit %d, stderr %q", args, code, errs)
			}
			if !strings.HasPrefix(out, "Usage: ferry "+c.name) || !strings.Contains(out, "Flags:") && c.name != "version" {
				t.Errorf("%v: help is\n%s", args, out)
			}
		}
	}
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		code, out, errs := runCLI(t, args...)
		if code != 0 || errs != "" || !strings.Contains(out, "Commands:") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
}

func TestUsageErrorsExitTwoWithOneMessage(t *testing.T) {
	for _, c := range commands {
		for _, args := range [][]string{{c.name, "--no-such-flag"}, {c.name, "extra"}} {
			code, out, errs := runCLI(t, args...)
			if code != 2 {
				t.Errorf("%v: exit %d, want 2", args, code)
			}
			if out != "" {
				t.Errorf("%v: printed %q on stdout", args, out)
			}
			// One message: the problem once, and where to read more.
			lines := strings.Split(strings.TrimSpace(errs), "\n")
			if len(lines) != 2 || !strings.HasPrefix(lines[0], "ferry "+c.name+": ") || lines[1] != "Run 'ferry "+c.name+" -h' for usage." {
				t.Errorf("%v: stderr is\n%s", args, errs)
			}
		}
	}
	for _, args := range [][]string{{"frobnicate"}, {"help", "frobnicate"}, {"help", "relay", "token"}} {
		code, out, errs := runCLI(t, args...)
		if code != 2 || out != "" || strings.Count(errs, "\n") != 2 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	code, out, errs := runCLI(t)
	if code != 2 || out != "" || !strings.Contains(errs, "Commands:") {
		t.Errorf("no command: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

// TestFlagPlaceholders checks that no flag's help shows a phrase as its
// argument's name: the flag package reads a back-quoted word of the usage
// text as the name, so "(`ferry relay`)" showed as "-child ferry relay".
func TestFlagPlaceholders(t *testing.T) {
	for _, c := range commands {
		_, out, _ := runCLI(t, c.name, "-h")
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "  -") && len(strings.Fields(line)) > 2 {
				t.Errorf("ferry %s -h: %q", c.name, line)
			}
		}
	}
	_, out, _ := runCLI(t, "bench", "-h")
	if !strings.Contains(out, "\n  -child\n") {
		t.Errorf("bench -child is not shown as a plain switch:\n%s", out)
	}
}

func TestVersion(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/ferrysync/ferry", Version: "v0.3.0"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "81c848a0"}, {Key: "vcs.time", Value: "2026-11-21T10:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	var out bytes.Buffer
	c := &VersionCommand{Stdout: &out, buildInfo: func() (*debug.BuildInfo, bool) { return bi, true }}
	if err := c.Run(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.HasPrefix(got, "ferry v0.3.0 (commit 81c848a0, 2026-11-21T10:00:00Z, with uncommitted changes) go1.26.0 ") {
		t.Fatalf("version: %q", got)
	}
	// This test binary's own build info: no commit, but a line all the same.
	// The habitual spellings say the same.
	for _, arg := range []string{"version", "--version", "-version", "-v"} {
		code, got, errs := runCLI(t, arg)
		if code != 0 || errs != "" || !strings.HasPrefix(got, "ferry ") || strings.Count(got, "\n") != 1 {
			t.Fatalf("ferry %s: exit %d, %q, stderr %q", arg, code, got, errs)
		}
	}
}
