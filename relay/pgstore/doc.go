// Package pgstore is a relay.Store on PostgreSQL, for running several
// `ferry relay` processes behind a load balancer on one database: any relay
// serves any device, and nothing is coordinated but through the database.
//
// The log is a table with one row per entry: a push stores what it adds,
// never a whole document. Each Append is one statement (a PL/pgSQL
// function) and so one transaction: it locks the collection's row, checks
// the lease's fence and every entry's base, numbers the entries after the
// collection's head (gap-free, never reused) and writes them. Failures that
// leave nothing done (a serialization failure, a dropped connection, a
// server restarting) are retried inside the store for a bounded time; an
// Append whose COMMIT's outcome was lost is retried under the id it was
// first sent with, and finds itself committed instead of being applied
// twice.
//
// The schema lives in its own PostgreSQL schema ("ferry" by default),
// created and migrated at Open under an advisory lock, so relays starting
// together take turns. The incarnation lives in the database, and changes
// when the data is restored into another database (see Store.Incarnation).
//
// Relays learn of each other's appends and lease releases by LISTEN/NOTIFY
// (Store.Watch): a wake-up hint only, sent after the commit. Presence,
// which is never stored, travels in the notification itself
// (Store.PublishPresence). Leases are
// timed by the database's clock (Store.Now): the relay takes the now it
// passes to the store from it, so relays whose clocks disagree agree on
// when a lease expires, while the conformance suite (relay/storetest)
// still drives time through the now arguments.
package pgstore
