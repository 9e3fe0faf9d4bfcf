// Package crdt holds Ferry's records as Automerge documents: typed field
// access, struct mapping, change export and import, heads, and the three-way
// field diff that conflict policies are built on.
//
// It is the only package that imports automerge-go. It is pure: no
// goroutines, no I/O and no clock; commit times are passed in. One thing
// it does to the process: on Linux with glibc, it caps the C allocator at
// two arenas when the program starts, as Automerge's memory freed across
// many threads otherwise stays spread over many (see [ReleaseNative]); a
// program that sets MALLOC_ARENA_MAX, or glibc's arena_max tunable,
// keeps its own.
//
// Changes move between documents as bytes ([Doc.ChangesSince] and
// [Doc.Import], which uses LoadIncremental). Import checks untrusted bytes
// before Automerge sees them, including that the document will still save
// and load: a change must be in the encoding Automerge writes itself
// (canonical.go) and refer only to operations the document holds
// (opindex.go). A deferred document ([NewDeferred], [LoadDeferred]) runs
// those checks against a Go index of its history and builds its Automerge
// document only when a method needs it, for a process that mostly checks
// and forwards changes (the relay); one made for a device
// ([NewDeferredAs]) also reads its fields and tombstone from its changes
// in Go, so a record a device only stores and reads never loads
// Automerge (materialize.go). A built document's fields, now or at a past
// version, are read in one call into Automerge's C interface (amread.go)
// rather than value by value through automerge-go. automerge-go's batch Apply is
// never used: applying a thousand small changes with it takes seconds and
// gigabytes, while LoadIncremental of the same bytes takes milliseconds.
//
// A record is a map at the document root. Its fields are the root keys, except
// [TombstoneKey], which marks a deleted record. Deletion is a field write so
// that a delete racing an update is a visible conflict ([Diff3]) rather than
// a silent loss.
//
// # Values
//
// A record holds these Go values, and reads give them back:
//
//	map[string]any, []any, string, int64, uint64, float64, bool, []byte,
//	time.Time, nil
//
// Writes also take other integer and float types, pointers, slices, arrays,
// maps with string keys and structs (see [Doc.Put]), and convert them. [Text]
// (Automerge's text object) reads as a Go string and a counter as an int64
// from [Doc.Get], [Doc.Fields] and [Doc.Decode] into any, because the
// JavaScript library writes every string as text, so readers must accept
// both. Where kinds matter ([Doc.GetTyped], [Doc.TypedFields] and [Diff3])
// they read as [Text] and [Counter].
//
// # Concurrency
//
// A [Doc], a [SyncState] and an [InflateBudget] are not safe for concurrent
// use: their owner serializes calls. Everything else the package returns
// (Heads, Path, Snapshot, FieldDiff, ChangeInfo) is a value that any number
// of goroutines may read at once, as long as none modifies it.
package crdt
