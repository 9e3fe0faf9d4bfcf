// Package policy holds the rules a sync follows: who wins a conflicting
// field (prefer-local, prefer-cloud, or the app's merge hook), when a sync
// runs (modes), what it moves (types), and on which networks it may run.
//
// It is pure: no goroutines, no I/O, no clock. The sync engine (package
// replica) calls a Resolver for each conflict it finds and writes the
// decision as a change that causally follows both sides, so every replica
// converges to it.
//
// Everything here is a value or a stateless function, safe for concurrent
// use, except the app's own Resolvers, which must be made so (see
// [Resolver]).
package policy
