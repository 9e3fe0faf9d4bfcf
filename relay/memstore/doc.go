// Package memstore holds a relay's data in memory: a relay.Store for
// tests (relay/relaytest's default), where nothing needs to survive the
// process. It passes relay/storetest's volatile suite; one mutex guards
// it, so it is simple rather than fast.
package memstore
