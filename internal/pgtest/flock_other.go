//go:build !unix

package pgtest

import "os"

// Elsewhere tests do not wait for each other: a restart may break another
// package's test running at the same moment.
func flock(*os.File, bool) error { return nil }
