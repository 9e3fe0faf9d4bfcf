package devrelay

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/ferrysync/ferry/internal/explain"
)

// Main runs an example: run gets the command line and stdout, and a
// context cancelled by Ctrl-C. An error is printed for people, with the
// example's name, and exits 1; -h (flag.ErrHelp) exits 0.
func Main(name string, run func(ctx context.Context, args []string, stdout io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp): // -h: usage printed
	case err != nil:
		fmt.Fprintln(os.Stderr, name+":", explain.Error(err))
		os.Exit(1)
	}
}

// parse parses args into fs, printing the flags to stdout for -h (and
// returning flag.ErrHelp). Errors are returned, not printed, so they are
// printed once. With noArgs, an argument left after the flags is an error.
func parse(fs *flag.FlagSet, args []string, stdout io.Writer, noArgs bool) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "usage: %s [flags]\n\nflags:\n", fs.Name())
			fs.SetOutput(stdout)
			fs.PrintDefaults()
		}
		return err
	}
	if noArgs && fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (every option is a flag; -h lists them)", fs.Arg(0))
	}
	return nil
}

// dataDir returns dir, or, if it is empty, a new temporary folder and the
// function that removes it.
func dataDir(dir, prefix string) (string, func(), error) {
	if dir != "" {
		return dir, func() {}, nil
	}
	tmp, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, err
	}
	return tmp, func() { os.RemoveAll(tmp) }, nil
}

// Setup reads the command line of an example that runs its own devices:
// the relay flags and --data. It returns the credentials, and the folder
// for the devices' stores: --data, or a temporary folder that done
// removes.
func Setup(name string, args []string, stdout io.Writer) (creds Credentials, dir string, done func(), err error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var rf Flags
	rf.Register(fs)
	data := fs.String("data", "", "keep the devices' stores in this folder (default: a temporary folder, removed at exit)")
	if err = parse(fs, args, stdout, true); err != nil {
		return creds, "", nil, err
	}
	if creds, err = rf.Credentials(); err != nil {
		return creds, "", nil, err
	}
	dir, done, err = dataDir(*data, "ferry-"+name+"-")
	return creds, dir, done, err
}
