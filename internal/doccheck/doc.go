// Package doccheck holds the test that type-checks the Go snippets of the
// repository's documentation (README.md, docs/*.md and the packages'
// doc.go comments) against the code, so that a snippet that no longer
// compiles fails the tests instead of misleading a reader. It has no
// code of its own.
package doccheck
