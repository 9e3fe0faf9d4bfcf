// Package crdt holds Ferry's records as Automerge documents: typed field
// access, struct mapping, change export and import, heads, and the three-way
// field diff that conflict policies are built on.
//
// It is the only package that imports automerge-go. It is pure: no
// goroutines, no I/O and no clock; commit times are passed in.
//
// Changes move between documents as bytes ([Doc.ChangesSince] and
// [Doc.Import], which uses LoadIncremental). Import checks untrusted bytes
// before Automerge sees them, including that the document will still save
// and load: a change must be in the encoding Automerge writes itself
// (canonical.go) and refer only to operations the document holds
// (opindex.go). automerge-go's batch Apply is
// never used: applying a thousand small changes with it takes seconds and
// gigabytes, while LoadIncremental of the same bytes takes milliseconds.
//
// A record is a map at the document root. Its fields are the root keys, except
// [TombstoneKey], which marks a deleted record. Deletion is a field write so
// that a delete racing an update is a visible conflict ([Diff3]) rather than
// a silent loss.
package crdt
