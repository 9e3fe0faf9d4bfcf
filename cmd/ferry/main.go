// Command ferry runs Ferry's relay and its tools:
//
//	ferry relay    run the relay that devices sync through
//	ferry token    issue an access token for an app
//	ferry backup   copy a stopped relay's data to a file
//	ferry restore  load a backup into an empty data folder
//	ferry inspect  summarize a device's store, read-only
//	ferry bench    run the sync and merge-throughput benchmarks
//	ferry version  print the version and commit this binary was built from
//	               (also "ferry --version" and "ferry -v")
//
// Run "ferry help COMMAND" (or "ferry COMMAND -h") for a command's flags.
// Help goes to standard output and exits 0; a command line ferry does not
// understand exits 2 with one message on standard error; a failure exits 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ferrysync/ferry/bench"
	"github.com/ferrysync/ferry/internal/explain"
)

func main() {
	bench.DeviceMain() // W6 runs its device in this executable, started again
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1 // the command ran and failed
	exitUsage  = 2 // the command line was not understood; nothing was done
)

// runMain runs the command line and prints its error, returning the exit
// code: the whole of main, so tests check codes and streams.
func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := run(ctx, args, stdout, stderr)
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errNoCommand):
		usage(stderr)
		return exitUsage
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "%s: %s\nRun '%s -h' for usage.\n", ue.cmd, explain.Error(ue.err), ue.cmd)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "ferry:", explain.Error(err))
		return exitFailed
	}
}

// command is one subcommand; Run parses its own flags, so tests call it
// directly. Run returns flag.ErrHelp after printing its help, and a
// *usageError for a command line it does not understand.
type command interface {
	Run(ctx context.Context, args []string) error
}

// commands are the subcommands, in the order usage lists them.
var commands = []struct {
	name, summary string
	new           func(stdout, stderr io.Writer) command
}{
	{"relay", "run the relay that devices sync through (try: ferry relay --dev)",
		func(o, e io.Writer) command { return &RelayCommand{Stdout: o, Stderr: e} }},
	{"token", "issue an access token for an app",
		func(o, e io.Writer) command { return &TokenCommand{Stdout: o, Stderr: e} }},
	{"backup", "copy a stopped relay's data to a file",
		func(o, e io.Writer) command { return &BackupCommand{Stdout: o, Stderr: e} }},
	{"restore", "load a backup into an empty data folder",
		func(o, e io.Writer) command { return &RestoreCommand{Stdout: o, Stderr: e} }},
	{"inspect", "summarize a device's store, read-only",
		func(o, e io.Writer) command { return &InspectCommand{Stdout: o, Stderr: e} }},
	{"bench", "run the sync, merge-throughput and local-read benchmarks (W0 to W6)",
		func(o, e io.Writer) command { return &BenchCommand{Stdout: o, Stderr: e} }},
	{"version", "print the version and commit this binary was built from",
		func(o, e io.Writer) command { return &VersionCommand{Stdout: o} }},
}

func lookup(name string, stdout, stderr io.Writer) command {
	for _, c := range commands {
		if c.name == name {
			return c.new(stdout, stderr)
		}
	}
	return nil
}

// errNoCommand means ferry was run without a command: usage goes to
// stderr and the exit code is 2.
var errNoCommand = errors.New("no command given")

// run runs one command line; help, once printed, is success.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errNoCommand
	}
	var err error
	switch name := args[0]; name {
	case "-h", "-help", "--help":
		usage(stdout)
		return nil
	case "help":
		err = help(ctx, args[1:], stdout, stderr)
	case "-v", "-version", "--version":
		// What people type by habit means "ferry version".
		err = lookup("version", stdout, stderr).Run(ctx, args[1:])
	default:
		cmd := lookup(name, stdout, stderr)
		if cmd == nil {
			return &usageError{cmd: "ferry", err: fmt.Errorf("unknown command %q (the commands: %s)", name, commandNames())}
		}
		err = cmd.Run(ctx, args[1:])
	}
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

// help prints ferry's usage, or one command's help.
func help(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch len(args) {
	case 0:
		usage(stdout)
		return nil
	case 1:
		cmd := lookup(args[0], stdout, stderr)
		if cmd == nil {
			return &usageError{cmd: "ferry help", err: fmt.Errorf("no command %q (the commands: %s)", args[0], commandNames())}
		}
		return cmd.Run(ctx, []string{"-h"})
	}
	return &usageError{cmd: "ferry help", err: fmt.Errorf("give one command, not %d arguments", len(args))}
}

func commandNames() string {
	var names []string
	for _, c := range commands {
		names = append(names, c.name)
	}
	return strings.Join(names, ", ")
}

func usage(w io.Writer) {
	fmt.Fprint(w, "Usage: ferry COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\nRun \"ferry help COMMAND\" for a command's flags.\n")
}

// usageError is a command line a command does not understand: a bad
// flag, a missing or contradictory one, an argument it does not take.
// Nothing was done; ferry exits 2.
type usageError struct {
	cmd string // "ferry relay"
	err error
}

func (e *usageError) Error() string { return e.cmd + ": " + e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef makes a usageError for the command fs parses.
func usagef(fs *flag.FlagSet, format string, args ...any) error {
	return &usageError{cmd: fs.Name(), err: fmt.Errorf(format, args...)}
}

// newFlags makes a command's flag set; parse reports its errors, not the
// flag package, so each is printed once.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("ferry "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parse parses a command's arguments, all of them flags. With -h it prints
// head and the flags to stdout and returns flag.ErrHelp; a bad flag or an
// argument left over is a usageError.
func parse(fs *flag.FlagSet, args []string, stdout io.Writer, head string) error {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, head)
		fmt.Fprintln(stdout, "\nFlags:")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		return flag.ErrHelp
	}
	if err != nil {
		return &usageError{cmd: fs.Name(), err: err}
	}
	if fs.NArg() > 0 {
		return usagef(fs, "unexpected argument %q (every option is a flag)", fs.Arg(0))
	}
	return nil
}
