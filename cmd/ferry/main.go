// Command ferry runs Ferry's relay and its tools:
//
//	ferry relay    run the relay that devices sync through
//	ferry token    issue an access token for an app
//	ferry backup   copy a stopped relay's data to a file
//	ferry restore  load a backup into an empty data folder
//	ferry inspect  summarize a replica's store
//	ferry bench    run the sync and merge-throughput benchmarks
//
// Run "ferry COMMAND -h" for a command's flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "ferry:", err)
		os.Exit(1)
	}
}

// command is one subcommand; Run parses its own flags, so tests call it
// directly.
type command interface {
	Run(ctx context.Context, args []string) error
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		usage(stderr)
		return flag.ErrHelp
	}
	var cmd command
	switch args[0] {
	case "relay":
		cmd = &RelayCommand{Stdout: stdout, Stderr: stderr}
	case "token":
		cmd = &TokenCommand{Stdout: stdout, Stderr: stderr}
	case "backup":
		cmd = &BackupCommand{Stdout: stdout, Stderr: stderr}
	case "restore":
		cmd = &RestoreCommand{Stdout: stdout, Stderr: stderr}
	case "inspect":
		cmd = &InspectCommand{Stdout: stdout, Stderr: stderr}
	case "bench":
		cmd = &BenchCommand{Stdout: stdout, Stderr: stderr}
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return nil
	default:
		usage(stderr)
		return fmt.Errorf("unknown command %q", args[0])
	}
	return cmd.Run(ctx, args[1:])
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage: ferry COMMAND [flags]

Commands:
  relay    run the relay that devices sync through (try: ferry relay --dev)
  token    issue an access token for an app
  backup   copy a stopped relay's data to a file
  restore  load a backup into an empty data folder
  inspect  summarize a replica's store
  bench    run the sync and merge-throughput benchmarks (W0 to W5)

Run "ferry COMMAND -h" for a command's flags.
`)
}

// newFlags makes a command's flag set: errors are returned, not fatal, so
// Run can be tested.
func newFlags(name string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("ferry "+name, flag.ContinueOnError)
	fs.SetOutput(out)
	return fs
}
