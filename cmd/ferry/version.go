package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// VersionCommand prints the module version and the commit this binary was
// built from, as the Go toolchain recorded them in its build info.
type VersionCommand struct {
	Stdout io.Writer

	// buildInfo reads the build info; nil means debug.ReadBuildInfo.
	// Tests replace it.
	buildInfo func() (*debug.BuildInfo, bool)
}

const versionHelp = `Usage: ferry version

Prints the module version and the commit this binary was built from. A
binary built inside a git checkout (go build, go run) records its commit;
one installed with "go install MODULE@VERSION" records its version.
`

func (c *VersionCommand) Run(ctx context.Context, args []string) error {
	fs := newFlags("version")
	if err := parse(fs, args, c.Stdout, versionHelp); err != nil {
		return err
	}
	read := c.buildInfo
	if read == nil {
		read = debug.ReadBuildInfo
	}
	bi, ok := read()
	if !ok {
		fmt.Fprintf(c.Stdout, "ferry: no build information (%s %s/%s)\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return nil
	}
	fmt.Fprintln(c.Stdout, versionLine(bi))
	return nil
}

// versionLine is "ferry VERSION (commit REV, TIME[, modified]) GO OS/ARCH".
func versionLine(bi *debug.BuildInfo) string {
	version := bi.Main.Version
	if version == "" {
		version = "(devel)"
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	commit := "commit unknown"
	if rev := settings["vcs.revision"]; rev != "" {
		commit = "commit " + rev
		if t := settings["vcs.time"]; t != "" {
			commit += ", " + t
		}
		if settings["vcs.modified"] == "true" {
			commit += ", with uncommitted changes"
		}
	}
	goVersion := bi.GoVersion
	if goVersion == "" {
		goVersion = runtime.Version()
	}
	return fmt.Sprintf("ferry %s (%s) %s %s/%s", version, commit, goVersion, runtime.GOOS, runtime.GOARCH)
}
